"""
Fixtures for the federation tests: federated registry processes, and a peer that never answers.

``federated`` starts registries that list each other as peers: their ports are chosen first, so
each one's ``FEDERATION_PEERS`` can name the others before any of them runs. ``silent_peer`` is a
loopback socket that takes connections (the kernel completes them) and never reads or answers, the
worst kind of dead peer: only a timeout ends a request to it.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from tests.conftest import LOOPBACK, MaxineProcess, MaxineProcessFactory, find_free_loopback_port

# Replication and lookups wait for slow peers this long in these tests.
TIMEOUT_MS = 500

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Federated = Callable[..., list[MaxineProcess]]


def request(
    url: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0
) -> tuple[int, Any, Mapping[str, str]]:
    """Status, decoded JSON and headers of one request, error statuses included."""
    data = None if body is None else json.dumps(body).encode()
    outgoing = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY_OPENER.open(outgoing, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), dict(error.headers)


@pytest.fixture
def federated(maxine_process: MaxineProcessFactory) -> Federated:
    """
    ``federated(["a", "b"], peers={"a": ["b"], "b": ["a"]}, extra={"a": [...]})`` starts one registry per
    name, each with the named ones as its peers (``http://127.0.0.1:<port>``); ``ports`` may give a
    registry's port, to reserve one for a registry started later.
    """

    def start(
        names: Sequence[str],
        *,
        peers: Mapping[str, Sequence[str]],
        ports: Mapping[str, int] | None = None,
        extra: Mapping[str, Sequence[str]] | None = None,
    ) -> list[MaxineProcess]:
        known = dict(ports or {})
        for name in {*names, *(peer for listed in peers.values() for peer in listed)}:
            known.setdefault(name, find_free_loopback_port())
        started = []
        for name in names:
            peer_list = ",".join(f"{peer}=http://{LOOPBACK}:{known[peer]}" for peer in peers.get(name, ()))
            args = [
                "--federation-enabled", "--federation-peers", peer_list, "--federation-timeout", str(TIMEOUT_MS),
                "--no-health-checks", *(extra or {}).get(name, ()),
            ]  # fmt: skip
            started.append(maxine_process(port=known[name], args=args))
        return started

    return start


@pytest.fixture
def silent_peer() -> Iterator[int]:
    """The port of a listener that accepts connections and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(64)
        yield listener.getsockname()[1]
