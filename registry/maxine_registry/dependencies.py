"""
Service dependencies: a directed graph of "``serviceName`` depends on ``dependsOn``", and what follows from it.

Edges are declared by operators or by the services themselves; neither end has to be registered,
since a dependency is often declared before the service that fills it starts. The graph answers
four questions: what a service depends on, what depends on it, which services a failure would
reach (``impact``: every service that depends on it, directly or through others, with the number
of hops), and where dependencies go round in a circle (``cycles``).

Cycles are enumerated completely with Johnson's algorithm: every elementary cycle (no service
twice), each reported once, starting at its alphabetically first service and closed by repeating
it (``["a", "b", "a"]``). A graph can hold exponentially many cycles, so at most ``MAX_CYCLES`` are
returned with a flag saying more exist; the answer is cached until the graph changes.

TODO: LATER: the search runs on the event loop; at the limits (10,000 edges, ``MAX_CYCLES``
cycles) one recomputation can take a noticeable fraction of a second, which a worker thread
would keep off the loop.

A service may not depend on itself: a self-loop says nothing about startup order or blast radius
that the service does not already know, and refusing it keeps every reported cycle between two
services or more. The graph is bounded (``MAX_EDGES``, ``MAX_DEPENDENCIES_PER_SERVICE``) and every
change is published on the event bus.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from maxine_registry.errors import Conflict, InvalidInput, NotFound
from maxine_registry.events import EventBus
from maxine_registry.model import validate_service_name
from maxine_registry.snapshots import Apply

logger = logging.getLogger(__name__)

DEPENDENCY_ADDED = "dependency_added"
DEPENDENCY_REMOVED = "dependency_removed"

MAX_EDGES = 10_000
MAX_DEPENDENCIES_PER_SERVICE = 500
MAX_CYCLES = 500

Graph = Mapping[str, Iterable[str]]


@dataclass(frozen=True, slots=True)
class CycleReport:
    cycles: list[list[str]]
    truncated: bool

    def view(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "count": len(self.cycles), "truncated": self.truncated}


class DependencyGraph:
    def __init__(self, *, events: EventBus) -> None:
        self._events = events
        self._dependencies: dict[str, set[str]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._edge_count = 0
        self._cycles: CycleReport | None = None

    def __repr__(self) -> str:
        return f"DependencyGraph(services={len(self.services())}, edges={self._edge_count})"

    @property
    def edge_count(self) -> int:
        return self._edge_count

    # Writes.

    def add(self, service_name: str, depends_on: str) -> bool:
        """Declare an edge; return False when it was already there (adding is idempotent)."""
        if service_name == depends_on:
            raise InvalidInput(f"Service {service_name!r} cannot depend on itself.", code="self_dependency")
        dependencies = self._dependencies.get(service_name, set())
        if depends_on in dependencies:
            return False
        if len(dependencies) >= MAX_DEPENDENCIES_PER_SERVICE:
            raise Conflict(
                f"Service {service_name!r} has {MAX_DEPENDENCIES_PER_SERVICE} dependencies, the limit.",
                code="too_many_dependencies",
            )
        if self._edge_count >= MAX_EDGES:
            raise Conflict(f"The dependency graph holds {MAX_EDGES} edges, the limit.", code="too_many_dependencies")

        self._dependencies.setdefault(service_name, set()).add(depends_on)
        self._dependents.setdefault(depends_on, set()).add(service_name)
        self._edge_count += 1
        self._cycles = None
        self._events.publish(DEPENDENCY_ADDED, {"serviceName": service_name, "dependsOn": depends_on})
        return True

    def remove(self, service_name: str, depends_on: str) -> None:
        dependencies = self._dependencies.get(service_name)
        if dependencies is None or depends_on not in dependencies:
            raise NotFound(
                f"Service {service_name!r} has no dependency on {depends_on!r}.", code="dependency_not_found"
            )
        _discard(self._dependencies, service_name, depends_on)
        _discard(self._dependents, depends_on, service_name)
        self._edge_count -= 1
        self._cycles = None
        self._events.publish(DEPENDENCY_REMOVED, {"serviceName": service_name, "dependsOn": depends_on})

    # Reads.

    def dependencies(self, service_name: str) -> list[str]:
        return sorted(self._dependencies.get(service_name, ()))

    def dependents(self, service_name: str) -> list[str]:
        return sorted(self._dependents.get(service_name, ()))

    def services(self) -> list[str]:
        """Every service at either end of an edge."""
        return sorted(self._dependencies.keys() | self._dependents.keys())

    def graph(self) -> dict[str, list[str]]:
        """Each service that depends on something, with what it depends on; sorted throughout."""
        return {name: sorted(self._dependencies[name]) for name in sorted(self._dependencies)}

    def impact(self, service_name: str) -> list[dict[str, Any]]:
        """
        Every service that depends on ``service_name``, directly or through others.

        ``depth`` is the fewest hops: 1 for a direct dependent. Ordered by depth, then name.
        """
        depths: dict[str, int] = {service_name: 0}
        frontier = deque([service_name])
        while frontier:
            current = frontier.popleft()
            for dependent in self._dependents.get(current, ()):
                if dependent not in depths:
                    depths[dependent] = depths[current] + 1
                    frontier.append(dependent)
        del depths[service_name]
        ordered = sorted(depths.items(), key=lambda item: (item[1], item[0]))
        return [{"serviceName": name, "depth": depth} for name, depth in ordered]

    def cycles(self) -> CycleReport:
        if self._cycles is None:
            found: list[list[str]] = []
            truncated = False
            for cycle in simple_cycles(self._dependencies):
                if len(found) == MAX_CYCLES:
                    truncated = True
                    break
                found.append(cycle)
            found.sort(key=lambda cycle: (len(cycle), cycle))
            self._cycles = CycleReport(cycles=found, truncated=truncated)
            if truncated:
                logger.warning(
                    "The dependency graph holds more than %d cycles; only that many are reported.", MAX_CYCLES
                )
        return self._cycles

    # Snapshots: the part named "dependencies", shaped like ``graph()``.

    def export(self) -> dict[str, list[str]]:
        return self.graph()

    def prepare(self, data: Any) -> Apply:
        if not isinstance(data, dict):
            raise InvalidInput("The dependencies snapshot part must be an object of serviceName: [dependsOn, ...].")
        dependencies: dict[str, set[str]] = {}
        dependents: dict[str, set[str]] = {}
        edges = 0
        for service_name, targets in data.items():
            name = validate_service_name(service_name, field="dependencies snapshot key")
            if not isinstance(targets, list):
                raise InvalidInput(f"dependencies[{name!r}] must be a list of service names.")
            if len(targets) > MAX_DEPENDENCIES_PER_SERVICE:
                raise InvalidInput(f"dependencies[{name!r}] lists more than {MAX_DEPENDENCIES_PER_SERVICE} services.")
            for target in targets:
                depends_on = validate_service_name(target, field=f"dependencies[{name!r}] entry")
                if depends_on == name:
                    raise InvalidInput(f"dependencies[{name!r}] lists the service itself.")
                if depends_on not in dependencies.setdefault(name, set()):
                    dependencies[name].add(depends_on)
                    dependents.setdefault(depends_on, set()).add(name)
                    edges += 1
            if not dependencies.get(name):
                dependencies.pop(name, None)
        if edges > MAX_EDGES:
            raise InvalidInput(f"The dependencies snapshot holds {edges} edges; the limit is {MAX_EDGES}.")

        def apply() -> None:
            self._dependencies = dependencies
            self._dependents = dependents
            self._edge_count = edges
            self._cycles = None
            logger.info("Dependencies restored from a snapshot: %d edges.", edges)

        return apply


def _discard(index: dict[str, set[str]], key: str, value: str) -> None:
    values = index[key]
    values.discard(value)
    if not values:
        del index[key]


# Graph algorithms, on plain mappings so that they are easy to test on their own.


def strongly_connected_components(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a long dependency chain must not hit the recursion limit)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    nodes = sorted(set(graph) | {target for targets in graph.values() for target in targets})
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = lowlink[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = lowlink[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    advanced = True
                    break
                if successor in on_stack:
                    lowlink[node] = min(lowlink[node], index[successor])
            if advanced:
                continue

            # Every successor is done: close the component if this node roots one, then return to the caller.
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[node])
            if lowlink[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def simple_cycles(graph: Graph) -> Iterator[list[str]]:
    """
    Every elementary cycle of ``graph`` (Johnson, 1975), as ``[start, ..., start]``.

    Each strongly connected component is searched from its least node; that node is then
    removed and the rest split into components again. Blocking keeps the search from walking
    a path that cannot lead back to the start, so the time between two cycles stays linear in
    the size of the graph. Self-loops are not reported (the dependency graph refuses them).
    """
    pending = [component for component in strongly_connected_components(graph) if len(component) > 1]
    while pending:
        component = pending.pop()
        members = set(component)
        subgraph = {node: sorted(target for target in graph.get(node, ()) if target in members) for node in component}
        start = component[0]
        yield from _cycles_through(start, subgraph)

        rest = {node: [target for target in targets if target != start] for node, targets in subgraph.items()}
        del rest[start]
        pending.extend(part for part in strongly_connected_components(rest) if len(part) > 1)


def _cycles_through(start: str, subgraph: dict[str, list[str]]) -> Iterator[list[str]]:
    path = [start]
    blocked = {start}
    # blocked_by[n]: nodes to unblock once n is unblocked (they were blocked because of n).
    blocked_by: defaultdict[str, set[str]] = defaultdict(set)
    # Nodes on the path from which a cycle was found since they were pushed.
    found_from: set[str] = set()
    work: list[tuple[str, Iterator[str]]] = [(start, iter(subgraph[start]))]
    while work:
        node, successors = work[-1]
        pushed = False
        for successor in successors:
            if successor == start:
                yield [*path, start]
                found_from.update(path)
            elif successor not in blocked:
                path.append(successor)
                work.append((successor, iter(subgraph[successor])))
                found_from.discard(successor)
                blocked.add(successor)
                pushed = True
                break
        if pushed:
            continue

        # Leaving ``node``: it may lead back to the start only if a cycle was found through it.
        if node in found_from:
            _unblock(node, blocked=blocked, blocked_by=blocked_by)
        else:
            for successor in subgraph[node]:
                blocked_by[successor].add(node)
        work.pop()
        path.pop()


def _unblock(node: str, *, blocked: set[str], blocked_by: defaultdict[str, set[str]]) -> None:
    pending = {node}
    while pending:
        current = pending.pop()
        if current in blocked:
            blocked.discard(current)
            pending.update(blocked_by[current])
            blocked_by[current].clear()
