"""
Which of the registry's hot modules this installation runs compiled.

A wheel built from this source compiles the modules below with mypyc (see setup.py); an editable
install, or a build without a C compiler, runs them as plain Python. Both behave the same; the
compiled ones take about a third less CPU per request. The server logs which it runs at start,
and the benchmarks print it beside their figures, since a figure means little without it.

This module imports nothing of the package: setup.py reads ``HOT_MODULES`` from it while building.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

# Every request on the lean HTTP path runs through these, and through little else of Maxine.
HOT_MODULES = (
    "maxine_registry.model",
    "maxine_registry.registration",
    "maxine_registry.leases",
    "maxine_registry.events",
    "maxine_registry.registry",
    "maxine_registry.strategies",
    "maxine_registry.traffic",
    "maxine_registry.breakers",
    # Registration guards: called on every registration, mostly to find nothing to do.
    "maxine_registry.governance",
    "maxine_registry.mesh.model",
    "maxine_registry.operations",
    "maxine_registry.http.lightning",
    "maxine_registry.udp",
)


def compiled_modules() -> dict[str, bool]:
    """Each hot module, and whether it was loaded from a compiled extension rather than its source."""
    compiled = {}
    for name in HOT_MODULES:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        compiled[name] = path.endswith(tuple(EXTENSION_SUFFIXES))
    return compiled


def build_kind() -> str:
    """``compiled``, ``interpreted``, or ``mixed`` (some hot modules compiled): for logs and reports."""
    states = set(compiled_modules().values())
    if states == {True}:
        return "compiled"
    return "interpreted" if states == {False} else "mixed"
