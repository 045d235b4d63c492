"""
The build step that pyproject.toml cannot say: the registry's hot modules compiled with mypyc.

Every request on the lean HTTP path runs through the same few modules (framing, validation, the
registry core, leases, events; ``build_info.HOT_MODULES`` lists them). Compiled to C by mypyc,
from the same type-checked source, they cost a third or more less CPU per request; the rest of the
package stays plain Python.

A wheel (``pip install .``, the container image) is compiled; an editable install is not, so the
source a developer edits is the code that runs. ``MAXINE_COMPILE=0`` builds a plain wheel, and
``MAXINE_COMPILE=1`` insists on compiling (the build fails rather than falling back). Without a C
compiler the default build falls back to plain Python (pip shows why with ``-v``, and the server's
start-up log names the build): the same behaviour, slower.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The hot modules' names, from the one list the running server also reports on.
HOT_MODULES = runpy.run_path(str(Path(__file__).parent / "registry/maxine_registry/build_info.py"))["HOT_MODULES"]


class FallbackBuildExt(build_ext):
    """Build the compiled modules, or, when allowed, go on without them."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # a missing compiler raises several distutils error types
            if os.environ.get("MAXINE_COMPILE") == "1":
                raise
            print(f"maxine: compiling the hot modules failed ({exc}); they stay plain Python.", file=sys.stderr)
            # A module compiled before the failure would need the shared part that was not: drop them all.
            for extension in self.extensions:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.get_ext_fullpath(extension.name))
            self.extensions = []


def compiled_extensions() -> list[object]:
    choice = os.environ.get("MAXINE_COMPILE", "auto")
    # setuptools builds an editable install through its ``editable_wheel`` command; mypyc runs only
    # for commands that build code, not for the several that only read metadata (a minute each).
    editable = "editable_wheel" in sys.argv
    builds = not {"bdist_wheel", "build", "build_ext"}.isdisjoint(sys.argv)
    if choice == "0" or not builds or (choice == "auto" and editable):
        return []

    # Relative paths, as mypyc names the compiled modules after them.
    paths = ["registry/" + name.replace(".", "/") + ".py" for name in HOT_MODULES]
    try:
        # Only here: an editable or plain build needs no mypy.
        from mypyc.build import mypycify  # noqa: PLC0415

        return list(mypycify(paths, opt_level="3", group_name="maxine_registry"))
    except (SystemExit, Exception) as exc:  # mypyc ends with SystemExit when type checking fails
        if choice == "1":
            raise
        print(f"maxine: mypyc could not compile the hot modules ({exc!r}); they stay plain Python.", file=sys.stderr)
        return []


def runtime_dependencies() -> list[str]:
    """
    The project's own dependencies, for the build environment of a compiled wheel.

    mypyc compiles from the types it sees, so it must see the libraries the code imports (aiohttp,
    orjson, ...), and pip builds a wheel before it installs them. setuptools hands these to pip
    as extra build requirements; an editable install asks for them too, though it compiles nothing.
    """
    if os.environ.get("MAXINE_COMPILE") == "0":
        return []
    with open(Path(__file__).parent / "pyproject.toml", "rb") as file:
        dependencies: list[str] = tomllib.load(file)["project"]["dependencies"]
    return dependencies


setup(
    ext_modules=compiled_extensions(),
    cmdclass={"build_ext": FallbackBuildExt},
    setup_requires=runtime_dependencies(),
)
