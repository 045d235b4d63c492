// The Maxine dashboard: counters, two charts, the node table and an event feed.
//
// The page follows the registry's event stream (the WebSocket at the server root). Each event goes
// into the feed and counts towards events per second; events that change the registry also schedule one refresh of
// /dashboard/state, which redraws the counters and the table (a burst of events costs one
// request). The state is polled every few seconds as well, for lease countdowns and for what
// events do not say (WebSocket clients). With auth on, the token typed into the header is kept
// in sessionStorage, sent as a Bearer header on requests and as the first WebSocket message.
"use strict";

(() => {
  const TOKEN_KEY = "maxine.token";
  const FEED_LIMIT = 100;
  const CHART_SECONDS = 120;
  const STATE_POLL_MS = 5000;
  const REFRESH_DELAY_MS = 150;
  const RECONNECT_MIN_MS = 1000;
  const RECONNECT_MAX_MS = 15000;
  const AUTH_FAILED = 4401;
  const QUIET_EVENTS = new Set(["service_heartbeat"]);

  const byId = (id) => document.getElementById(id);

  const view = {
    connection: byId("connection"),
    problem: byId("problem"),
    tokenForm: byId("token-form"),
    token: byId("token"),
    tokenClear: byId("token-clear"),
    services: byId("count-services"),
    nodes: byId("count-nodes"),
    unhealthy: byId("count-unhealthy"),
    breakers: byId("count-breakers"),
    rate: byId("count-rate"),
    ws: byId("count-ws"),
    eventsChart: byId("chart-events"),
    nodesChart: byId("chart-nodes"),
    rows: byId("nodes"),
    empty: byId("empty"),
    truncated: byId("truncated"),
    feed: byId("events"),
  };

  const state = {
    socket: null,
    live: false,
    reconnectDelay: RECONNECT_MIN_MS,
    reconnectTimer: null,
    refreshTimer: null,
    instanceId: null,
    feed: [], // newest first, at most FEED_LIMIT, no two with the same seq
    eventsThisSecond: 0,
    eventRates: new Array(CHART_SECONDS).fill(0),
    healthySeries: new Array(CHART_SECONDS).fill(0),
    unhealthySeries: new Array(CHART_SECONDS).fill(0),
    lastCounts: { healthy: 0, unhealthy: 0 },
  };

  class AuthNeeded extends Error {}
  class Forbidden extends Error {}

  // Talking to the registry.

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function getJson(path) {
    const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401) {
      throw new AuthNeeded(`${path} needs a valid token`);
    }
    if (response.status === 403) {
      throw new Forbidden(`${path} needs a token with more rights`);
    }
    if (!response.ok) {
      throw new Error(`${path} answered ${response.status}`);
    }
    return response.json();
  }

  async function refreshState() {
    try {
      render(await getJson("/dashboard/state"));
      showProblem("");
    } catch (error) {
      if (error instanceof AuthNeeded) {
        setConnection("auth", "token needed");
      }
      showProblem(error.message);
    }
  }

  function scheduleRefresh() {
    if (state.refreshTimer === null) {
      state.refreshTimer = setTimeout(() => {
        state.refreshTimer = null;
        refreshState();
      }, REFRESH_DELAY_MS);
    }
  }

  async function seedEvents() {
    try {
      const history = await getJson(`/events?limit=${FEED_LIMIT}`);
      history.events.forEach(remember);
      renderFeed();
    } catch (error) {
      showProblem(error.message);
    }
  }

  function connect() {
    state.reconnectTimer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // The server root upgrades to the event stream. A browser cannot send an Authorization header
    // with a WebSocket, so with auth on the token goes in the first message instead.
    const socket = new WebSocket(`${scheme}//${location.host}/`);
    state.socket = socket;
    setConnection("connecting", "connecting");

    socket.addEventListener("open", () => {
      // With auth on the first message must be the token; without a token, an empty
      // subscription (every event) gets the acknowledgement that tells the page it is live.
      socket.send(JSON.stringify(token() ? { auth: token() } : { subscribe: {} }));
    });
    socket.addEventListener("message", (message) => onMessage(message.data));
    socket.addEventListener("close", (close) => {
      if (state.socket !== socket) {
        return;
      }
      state.socket = null;
      state.live = false;
      if (close.code === AUTH_FAILED) {
        setConnection("auth", "token needed");
        showProblem(close.reason);
        return;
      }
      setConnection("down", "reconnecting");
      state.reconnectTimer = setTimeout(connect, state.reconnectDelay);
      state.reconnectDelay = Math.min(state.reconnectDelay * 2, RECONNECT_MAX_MS);
    });
  }

  function reconnect() {
    if (state.reconnectTimer !== null) {
      clearTimeout(state.reconnectTimer);
    }
    const old = state.socket;
    state.socket = null;
    if (old !== null) {
      old.close(1000, "The dashboard reconnects.");
    }
    state.reconnectDelay = RECONNECT_MIN_MS;
    connect();
  }

  function onMessage(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.type === "authenticated" || message.type === "subscribed") {
      if (!state.live) {
        state.live = true;
        state.reconnectDelay = RECONNECT_MIN_MS;
        setConnection("live", "live");
        seedEvents();
        refreshState();
      }
    } else if (message.type === "error") {
      showProblem(message.error);
    } else if (typeof message.event === "string") {
      state.eventsThisSecond += 1;
      if (remember(message)) {
        renderFeed();
      }
      if (!QUIET_EVENTS.has(message.event)) {
        scheduleRefresh();
      }
    }
  }

  // Keeping the feed: newest first, each seq once.

  function remember(event) {
    if (state.feed.some((known) => known.seq === event.seq)) {
      return false;
    }
    state.feed.push(event);
    state.feed.sort((a, b) => b.seq - a.seq);
    state.feed.length = Math.min(state.feed.length, FEED_LIMIT);
    return true;
  }

  // Drawing.

  function setConnection(kind, text) {
    view.connection.dataset.state = kind;
    view.connection.textContent = text;
  }

  function showProblem(text) {
    view.problem.textContent = text || "";
    view.problem.hidden = !text;
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    if (className) {
      node.className = className;
    }
    return node;
  }

  function badge(text, tone) {
    return element("span", text, `badge ${tone}`);
  }

  function render(registry) {
    if (state.instanceId !== null && state.instanceId !== registry.instanceId) {
      // The registry restarted: its event numbers start over.
      state.feed = [];
      renderFeed();
    }
    state.instanceId = registry.instanceId;

    const unhealthy = registry.nodeCount - registry.healthyNodes;
    view.services.textContent = registry.serviceCount;
    view.nodes.textContent = registry.nodeCount;
    view.unhealthy.textContent = unhealthy;
    view.breakers.textContent = registry.openBreakers;
    view.ws.textContent = registry.wsConnections;
    state.lastCounts = { healthy: registry.healthyNodes, unhealthy };

    const rows = document.createDocumentFragment();
    for (const service of registry.services) {
      for (const node of service.nodes) {
        const row = document.createElement("tr");
        row.dataset.service = service.name;
        row.dataset.node = node.nodeId;
        row.append(
          element("td", service.name),
          element("td", node.nodeId),
          element("td", node.address),
          element("td", node.version || "-"),
        );
        const health = element("td");
        health.append(node.healthy ? badge("healthy", "good") : badge("unhealthy", "bad"));
        const breaker = element("td");
        const breakerTone = { closed: "neutral", open: "bad", "half-open": "warn" }[node.circuitBreaker] || "neutral";
        breaker.append(badge(node.circuitBreaker, breakerTone));
        row.append(
          health,
          breaker,
          element("td", `${Math.round(node.expiresIn)} s`, "number"),
          element("td", node.averageResponseTime === null ? "-" : node.averageResponseTime, "number"),
        );
        rows.append(row);
      }
    }
    view.rows.replaceChildren(rows);
    view.empty.hidden = registry.services.length > 0;
    view.truncated.hidden = !registry.truncated;
  }

  function describe(event) {
    const data = event.data || {};
    const parts = [];
    for (const [key, value] of Object.entries(data)) {
      if (value !== null && typeof value !== "object") {
        parts.push(`${key}=${value}`);
      }
    }
    return parts.join("  ");
  }

  function renderFeed() {
    const items = document.createDocumentFragment();
    for (const event of state.feed) {
      const item = document.createElement("li");
      item.dataset.event = event.event;
      const when = new Date(event.timestamp);
      const time = element("time", when.toLocaleTimeString());
      time.dateTime = when.toISOString();
      item.append(time, element("span", event.event, "name"), element("span", describe(event), "detail"));
      items.append(item);
    }
    view.feed.replaceChildren(items);
  }

  function drawChart(canvas, series) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);

    const left = 36;
    const bottom = height - 16;
    const top = 8;
    const right = width - 8;
    const highest = Math.max(1, ...series.flatMap((line) => line.values));
    const scale = niceCeiling(highest);
    // Round labels: a scale of 2, 20, ... splits in four; one of 1, 5, 10, 50, ... in five.
    const steps = String(scale).startsWith("2") ? 4 : 5;

    // Grid lines and their labels.
    context.strokeStyle = "#dde2ea";
    context.fillStyle = "#5d6678";
    context.font = "11px system-ui, sans-serif";
    context.lineWidth = 1;
    for (let step = 0; step <= steps; step += 1) {
      const y = bottom - ((bottom - top) * step) / steps;
      context.beginPath();
      context.moveTo(left, y);
      context.lineTo(right, y);
      context.stroke();
      const label = (scale * step) / steps;
      context.fillText(Number.isInteger(label) ? String(label) : label.toFixed(1), 2, y + 4);
    }
    context.fillText(`-${CHART_SECONDS}s`, left, height - 2);
    context.fillText("now", right - 20, height - 2);

    // The lines, oldest sample on the left.
    for (const line of series) {
      context.strokeStyle = line.color;
      context.lineWidth = 2;
      context.beginPath();
      line.values.forEach((value, index) => {
        const x = left + ((right - left) * index) / (line.values.length - 1);
        const y = bottom - ((bottom - top) * value) / scale;
        if (index === 0) {
          context.moveTo(x, y);
        } else {
          context.lineTo(x, y);
        }
      });
      context.stroke();
    }
  }

  function niceCeiling(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const factor of [1, 2, 5, 10]) {
      if (value <= factor * magnitude) {
        return factor * magnitude;
      }
    }
    return 10 * magnitude;
  }

  function shift(series, value) {
    series.push(value);
    series.shift();
  }

  function tick() {
    shift(state.eventRates, state.eventsThisSecond);
    view.rate.textContent = state.eventsThisSecond;
    state.eventsThisSecond = 0;
    shift(state.healthySeries, state.lastCounts.healthy);
    shift(state.unhealthySeries, state.lastCounts.unhealthy);
    drawChart(view.eventsChart, [{ values: state.eventRates, color: "#2f6fde" }]);
    drawChart(view.nodesChart, [
      { values: state.healthySeries, color: "#1f8a4c" },
      { values: state.unhealthySeries, color: "#c73a2f" },
    ]);
  }

  // Wiring.

  view.token.value = token();
  view.tokenForm.addEventListener("submit", (submit) => {
    submit.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, view.token.value.trim());
    reconnect();
  });
  view.tokenClear.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    view.token.value = "";
    reconnect();
  });

  setInterval(tick, 1000);
  setInterval(() => {
    if (state.live) {
      refreshState();
    }
  }, STATE_POLL_MS);
  tick();
  connect();
})();
