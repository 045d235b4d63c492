// The dependency graph page: fetches the graph and its cycles from Maxine, lays the services out with a
// small force-directed simulation (Fruchterman-Reingold), and draws them as SVG. No library, no network
// access beyond Maxine itself, so the page works offline and under a strict Content-Security-Policy.
// TODO: LATER: redraw on dependency_added / dependency_removed events from the WebSocket stream;
// until then the Refresh button reloads the graph.
"use strict";

(function () {
  const API = "api/maxine/serviceops/dependency/";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WIDTH = 960;
  const HEIGHT = 640;
  const MARGIN = 40;
  const RADIUS = 14;
  const LAYOUT_STEPS = 300;
  const COLORS = {
    node: "#4a78c2",
    selected: "#1d2330",
    dependency: "#2f9e6e",
    impacted: "#d9534f",
    edge: "#8b93a7",
    cycleEdge: "#f0a030",
    label: "#1d2330",
  };

  const state = { graph: {}, cycles: [], truncated: false, nodes: [], edges: [], byName: new Map(), selected: null };

  function byId(id) {
    return document.getElementById(id);
  }

  function svgElement(tag, attributes) {
    const element = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      element.setAttribute(name, String(value));
    }
    return element;
  }

  async function getJson(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.error || response.status + " " + response.statusText);
    }
    return body;
  }

  function showError(message) {
    const box = byId("error");
    box.textContent = message;
    box.hidden = !message;
  }

  // The model: one node per service at either end of an edge, one edge per dependency.

  function buildModel(graph) {
    const names = new Set();
    const edges = [];
    for (const [service, dependencies] of Object.entries(graph)) {
      names.add(service);
      for (const dependency of dependencies) {
        names.add(dependency);
        edges.push({ source: service, target: dependency });
      }
    }
    // Start on a circle in name order: the same graph always settles into the same picture.
    const sorted = Array.from(names).sort();
    const ring = Math.min(WIDTH, HEIGHT) * 0.35;
    const nodes = sorted.map(function (name, index) {
      const angle = (2 * Math.PI * index) / Math.max(sorted.length, 1);
      return { name: name, x: WIDTH / 2 + ring * Math.cos(angle), y: HEIGHT / 2 + ring * Math.sin(angle), dx: 0, dy: 0 };
    });
    return { nodes: nodes, edges: edges, byName: new Map(nodes.map((node) => [node.name, node])) };
  }

  function clamp(value, low, high) {
    return Math.max(low, Math.min(high, value));
  }

  function layout(nodes, edges, byName) {
    // Every pair repels, every edge pulls, a weak pull to the centre keeps islands on screen, and the
    // step size cools so that the layout settles instead of oscillating.
    const ideal = Math.sqrt((WIDTH * HEIGHT) / Math.max(nodes.length, 1)) * 0.5;
    let temperature = WIDTH / 10;
    for (let step = 0; step < LAYOUT_STEPS; step++) {
      for (const node of nodes) {
        node.dx = 0;
        node.dy = 0;
      }
      for (let i = 0; i < nodes.length; i++) {
        for (let j = i + 1; j < nodes.length; j++) {
          const a = nodes[i];
          const b = nodes[j];
          let dx = a.x - b.x;
          let dy = a.y - b.y;
          let distance = Math.hypot(dx, dy);
          if (distance < 0.01) {
            dx = 0.01 * (j - i);
            dy = 0.01;
            distance = Math.hypot(dx, dy);
          }
          const push = (ideal * ideal) / distance;
          a.dx += (dx / distance) * push;
          a.dy += (dy / distance) * push;
          b.dx -= (dx / distance) * push;
          b.dy -= (dy / distance) * push;
        }
      }
      for (const edge of edges) {
        const a = byName.get(edge.source);
        const b = byName.get(edge.target);
        const dx = a.x - b.x;
        const dy = a.y - b.y;
        const distance = Math.max(Math.hypot(dx, dy), 0.01);
        const pull = (distance * distance) / ideal;
        a.dx -= (dx / distance) * pull;
        a.dy -= (dy / distance) * pull;
        b.dx += (dx / distance) * pull;
        b.dy += (dy / distance) * pull;
      }
      for (const node of nodes) {
        node.dx += (WIDTH / 2 - node.x) * 0.05 * ideal / 10;
        node.dy += (HEIGHT / 2 - node.y) * 0.05 * ideal / 10;
        const length = Math.hypot(node.dx, node.dy);
        if (length > 0) {
          const moved = Math.min(length, temperature);
          node.x = clamp(node.x + (node.dx / length) * moved, MARGIN, WIDTH - MARGIN);
          node.y = clamp(node.y + (node.dy / length) * moved, MARGIN, HEIGHT - MARGIN);
        }
      }
      temperature = Math.max(temperature * 0.97, 0.5);
    }
  }

  // Drawing.

  function cycleEdgeKeys() {
    const keys = new Set();
    for (const cycle of state.cycles) {
      for (let i = 0; i + 1 < cycle.length; i++) {
        keys.add(cycle[i] + "\u0000" + cycle[i + 1]);
      }
    }
    return keys;
  }

  function edgeEnds(edge) {
    // Stop the line at the target's rim so that the arrowhead shows.
    const a = state.byName.get(edge.source);
    const b = state.byName.get(edge.target);
    const distance = Math.max(Math.hypot(b.x - a.x, b.y - a.y), 0.01);
    const ux = (b.x - a.x) / distance;
    const uy = (b.y - a.y) / distance;
    return { x1: a.x + ux * RADIUS, y1: a.y + uy * RADIUS, x2: b.x - ux * (RADIUS + 2), y2: b.y - uy * (RADIUS + 2) };
  }

  function render() {
    const svg = byId("graph");
    svg.replaceChildren();
    const defs = svgElement("defs");
    for (const [id, color] of [["arrow", COLORS.edge], ["arrow-cycle", COLORS.cycleEdge]]) {
      const marker = svgElement("marker", {
        id: id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
      });
      marker.appendChild(svgElement("path", { d: "M0,0 L10,5 L0,10 z", fill: color }));
      defs.appendChild(marker);
    }
    svg.appendChild(defs);
    svg.appendChild(svgElement("rect", { x: 0, y: 0, width: WIDTH, height: HEIGHT, fill: "#ffffff" }));

    const inCycle = cycleEdgeKeys();
    const edgeLayer = svgElement("g", { class: "edges" });
    for (const edge of state.edges) {
      const cyclic = inCycle.has(edge.source + "\u0000" + edge.target);
      const line = svgElement("line", Object.assign(edgeEnds(edge), {
        class: cyclic ? "edge cycle" : "edge",
        stroke: cyclic ? COLORS.cycleEdge : COLORS.edge,
        "stroke-width": cyclic ? 2.5 : 1.5,
        "marker-end": cyclic ? "url(#arrow-cycle)" : "url(#arrow)",
        "data-source": edge.source,
        "data-target": edge.target,
      }));
      edge.element = line;
      edgeLayer.appendChild(line);
    }
    svg.appendChild(edgeLayer);

    const nodeLayer = svgElement("g", { class: "nodes" });
    for (const node of state.nodes) {
      const group = svgElement("g", { class: "node", "data-service": node.name, tabindex: 0, role: "button" });
      const title = svgElement("title");
      title.textContent = node.name;
      const circle = svgElement("circle", { r: RADIUS, fill: COLORS.node, stroke: "#ffffff", "stroke-width": 2 });
      const label = svgElement("text", {
        y: RADIUS + 14, "text-anchor": "middle", "font-size": 12, "font-family": "sans-serif", fill: COLORS.label,
      });
      label.textContent = node.name;
      group.append(title, circle, label);
      node.element = group;
      node.circle = circle;
      place(node);
      enableDrag(group, node);
      group.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") {
          select(node.name);
        }
      });
      nodeLayer.appendChild(group);
    }
    svg.appendChild(nodeLayer);
    paintSelection();
  }

  function place(node) {
    node.element.setAttribute("transform", "translate(" + node.x.toFixed(1) + " " + node.y.toFixed(1) + ")");
  }

  function enableDrag(group, node) {
    // A press that barely moves is a click (select); a real move drags the node and its edges.
    let start = null;
    group.addEventListener("pointerdown", function (event) {
      start = { x: event.clientX, y: event.clientY, moved: false };
      group.setPointerCapture(event.pointerId);
    });
    group.addEventListener("pointermove", function (event) {
      if (start === null) {
        return;
      }
      if (!start.moved && Math.hypot(event.clientX - start.x, event.clientY - start.y) < 4) {
        return;
      }
      start.moved = true;
      const matrix = byId("graph").getScreenCTM();
      if (matrix === null) {
        return;
      }
      const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
      node.x = clamp(point.x, MARGIN / 2, WIDTH - MARGIN / 2);
      node.y = clamp(point.y, MARGIN / 2, HEIGHT - MARGIN / 2);
      place(node);
      for (const edge of state.edges) {
        if (edge.source === node.name || edge.target === node.name) {
          for (const [name, value] of Object.entries(edgeEnds(edge))) {
            edge.element.setAttribute(name, value.toFixed(1));
          }
        }
      }
    });
    group.addEventListener("pointerup", function () {
      const wasClick = start !== null && !start.moved;
      start = null;
      if (wasClick) {
        select(node.name);
      }
    });
  }

  // Selection: what the service depends on, what depends on it, and its impact.

  function listSection(panel, heading, items, describe) {
    const title = document.createElement("h3");
    title.textContent = heading;
    panel.appendChild(title);
    if (items.length === 0) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "None.";
      panel.appendChild(empty);
      return;
    }
    const list = document.createElement("ul");
    for (const item of items) {
      const entry = document.createElement("li");
      entry.textContent = describe(item);
      list.appendChild(entry);
    }
    panel.appendChild(list);
  }

  async function select(name) {
    state.selected = { name: name, impacted: new Set(), dependencies: new Set(state.graph[name] || []) };
    paintSelection();
    let impact;
    try {
      impact = await getJson(API + "impact?serviceName=" + encodeURIComponent(name));
    } catch (error) {
      showError("Could not load the impact of " + name + ": " + error.message);
      return;
    }
    if (state.selected === null || state.selected.name !== name) {
      return;
    }
    state.selected.impacted = new Set(impact.impacted.map((item) => item.serviceName));
    paintSelection();

    const dependents = state.edges.filter((edge) => edge.target === name).map((edge) => edge.source).sort();
    const panel = byId("impact-panel");
    panel.replaceChildren();
    const title = document.createElement("h2");
    title.textContent = name;
    panel.appendChild(title);
    listSection(panel, "Depends on", Array.from(state.selected.dependencies).sort(), (item) => item);
    listSection(panel, "Depended on by", dependents, (item) => item);
    listSection(panel, "Impact of a failure", impact.impacted, function (item) {
      return item.serviceName + " (" + (item.depth === 1 ? "directly" : item.depth + " hops away") + ")";
    });
  }

  function paintSelection() {
    const selected = state.selected;
    for (const node of state.nodes) {
      let color = COLORS.node;
      if (selected !== null) {
        if (node.name === selected.name) {
          color = COLORS.selected;
        } else if (selected.impacted.has(node.name)) {
          color = COLORS.impacted;
        } else if (selected.dependencies.has(node.name)) {
          color = COLORS.dependency;
        }
      }
      node.circle.setAttribute("fill", color);
      node.element.classList.toggle("selected", selected !== null && node.name === selected.name);
    }
  }

  // Cycles, status, and loading.

  function showCycles() {
    const box = byId("cycle-warning");
    box.replaceChildren();
    if (state.cycles.length === 0) {
      box.hidden = true;
      return;
    }
    const count = state.cycles.length + (state.truncated ? " or more" : "");
    const heading = document.createElement("strong");
    heading.textContent = "Circular dependencies: " + count + " cycle" + (state.cycles.length === 1 ? "" : "s") + " found.";
    const list = document.createElement("ul");
    for (const cycle of state.cycles) {
      const entry = document.createElement("li");
      entry.textContent = cycle.join(" \u2192 ");
      list.appendChild(entry);
    }
    box.append(heading, list);
    box.hidden = false;
  }

  async function load() {
    let graph;
    let cycles;
    try {
      [graph, cycles] = await Promise.all([getJson(API + "graph"), getJson(API + "cycles")]);
    } catch (error) {
      showError("Could not load the dependency graph: " + error.message);
      byId("status").textContent = "";
      return;
    }
    showError("");
    const model = buildModel(graph);
    layout(model.nodes, model.edges, model.byName);
    Object.assign(state, {
      graph: graph, cycles: cycles.cycles, truncated: cycles.truncated, nodes: model.nodes, edges: model.edges,
      byName: model.byName, selected: null,
    });
    render();
    showCycles();
    byId("status").textContent = state.nodes.length === 0
      ? "No dependencies are declared yet."
      : state.nodes.length + " services, " + state.edges.length + " dependencies.";
  }

  // Exports.

  function download(filename, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type: type }));
    const link = document.createElement("a");
    link.href = url;
    link.download = filename;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () {
      URL.revokeObjectURL(url);
    }, 1000);
  }

  function exportJson() {
    const document_ = { graph: state.graph, cycles: state.cycles, truncated: state.truncated };
    download("dependency-graph.json", "application/json", JSON.stringify(document_, null, 2) + "\n");
  }

  function exportSvg() {
    const copy = byId("graph").cloneNode(true);
    copy.setAttribute("xmlns", SVG_NS);
    copy.setAttribute("width", WIDTH);
    copy.setAttribute("height", HEIGHT);
    const text = '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(copy) + "\n";
    download("dependency-graph.svg", "image/svg+xml", text);
  }

  document.addEventListener("DOMContentLoaded", function () {
    byId("refresh").addEventListener("click", load);
    byId("export-json").addEventListener("click", exportJson);
    byId("export-svg").addEventListener("click", exportSvg);
    load();
  });
})();
