"""
The local end-to-end run: a whole Maxine deployment as processes on 127.0.0.1, for machines without Kubernetes.

Redis, the registry on Redis, an emulated Kubernetes API with the real operator, demo apps with real
sidecars, and a real Envoy on the registry's xDS. ``LocalCluster`` (``cluster``) starts them and stops
them; ``processes`` and ``kubernetes`` hold the parts; ``demo_app.py`` is the app the pods run. The
suite that drives it is ``tests/e2e/test_local_cluster.py`` (``python -m pytest tests/e2e -m e2e``).

It reuses the test suite's own runners (the registry and Redis processes of ``tests/conftest.py``,
Envoy of ``tests/mesh``, the Kubernetes emulator of ``tests/operator``), so run it from the root of
a clone, where ``tests`` is importable.
"""

from __future__ import annotations

from e2e.local.cluster import LocalCluster
from e2e.local.kubernetes import EmulatedKubernetes
from e2e.local.processes import DeadlineExceeded, EnvoyProxy, ManagedProcess, OperatorProcess, Pod, wait_until

__all__ = [
    "DeadlineExceeded",
    "EmulatedKubernetes",
    "EnvoyProxy",
    "LocalCluster",
    "ManagedProcess",
    "OperatorProcess",
    "Pod",
    "wait_until",
]
