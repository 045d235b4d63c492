"""
The container image, checked without a Docker engine: the Dockerfile's structure, and the build it runs.

The Dockerfile is read with Docker's own parser (the ``dockerfile`` package wraps it), so a syntax
error fails here as it would in ``docker build``. The checks are the image's promises: two stages,
a final stage on the slim Python 3.11 image that installs no compiler and runs as a numeric
non-root user, the ports, and ``maxine`` as the default command. The build step itself (``pip
install .`` from the build context) is replayed on a copy of the context that ``.dockerignore``
leaves, to see that the wheel it makes carries every package and every console script.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import dockerfile
import pytest

ROOT = Path(__file__).parents[2]
COMMANDS = ("maxine", "maxine-operator", "maxine-sidecar")
PACKAGES = ("maxine_registry", "maxine_client", "maxine_operator", "maxine_sidecar")
COMPILERS = ("gcc", "g++", "clang", "build-essential", "python3-dev", "libc6-dev", "make")
WHEEL_TIMEOUT = 300


def stages() -> list[list[dockerfile.Command]]:
    """The Dockerfile's instructions, one list per stage (each starting with its FROM)."""
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    found: list[list[dockerfile.Command]] = []
    for command in commands:
        if command.cmd == "FROM":
            found.append([command])
        elif found:
            found[-1].append(command)
    return found


def build_arguments() -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM, which FROM lines may use."""
    arguments: dict[str, str] = {}
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG" and "=" in command.value[0]:
            name, default = command.value[0].split("=", 1)
            arguments[name] = default
    return arguments


def base_image(stage: list[dockerfile.Command]) -> str:
    image = stage[0].value[0]
    for name, value in build_arguments().items():
        image = image.replace("${" + name + "}", value).replace("$" + name, value)
    return image


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``relative`` out of the build context (the subset of its syntax used here)."""
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[:depth]), pattern) for depth in range(1, len(parts) + 1)):
            return True
    return False


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_build_has_a_builder_stage_and_a_slim_python_311_final_stage() -> None:
    builder, final = stages()

    assert builder[0].value[1:] == ("AS", "builder")
    assert base_image(final).startswith("python:3.11-slim")
    copies = [command for command in final if command.cmd == "COPY"]
    assert [command.flags for command in copies] == [("--from=builder",)]


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    final = stages()[-1]

    users = [command.value[0] for command in final if command.cmd == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert uid == "10001"


def test_the_final_stage_installs_no_compiler() -> None:
    final = stages()[-1]

    for command in final:
        if command.cmd == "RUN":
            words = set(re.split(r"[\s;&|]+", command.value[0]))
            assert not words & set(COMPILERS), f"the final stage installs a build tool: {command.original}"
    assert "gcc" not in base_image(final)


def test_the_image_exposes_http_grpc_and_udp_and_runs_the_registry_by_default() -> None:
    final = stages()[-1]

    exposed = {port for command in final if command.cmd == "EXPOSE" for port in command.value}
    assert {"8080", "50051", "8080/udp"} <= exposed
    commands = [command for command in final if command.cmd == "CMD"]
    assert commands[-1].json
    assert commands[-1].value == ("maxine",)


def test_every_command_of_the_image_is_a_console_script_that_resolves() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    for name in COMMANDS:
        assert name in scripts, f"pyproject.toml has no console script {name!r}"
        module, function = scripts[name].split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_the_build_context_keeps_the_sources_and_leaves_out_the_rest() -> None:
    patterns = dockerignore_patterns()
    where = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["where"]

    for needed in ["pyproject.toml", "setup.py", "README.md", *where, "sidecar/maxine_sidecar/cli.py"]:
        assert not ignored(needed, patterns), f".dockerignore leaves out {needed}"
    for unwanted in [".git/config", "tests/conftest.py", "bench/README.md", "sidecar/maxine_sidecar/__pycache__/x.pyc"]:
        assert ignored(unwanted, patterns), f".dockerignore lets {unwanted} in"


@pytest.mark.e2e
def test_the_builder_step_makes_a_wheel_with_every_package_and_command(tmp_path: Path) -> None:
    # The build context as Docker would send it: the tracked and untracked files .dockerignore lets through.
    patterns = dockerignore_patterns()
    context = tmp_path / "context"
    for source in ROOT.rglob("*"):
        relative = source.relative_to(ROOT).as_posix()
        if source.is_file() and not ignored(relative, patterns):
            target = context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

    # `pip install .` builds this wheel first; no index and no build isolation, so nothing is downloaded.
    # Plain Python (MAXINE_COMPILE=0) to keep this quick: .ci/run builds the compiled wheel and runs
    # the whole suite against it.
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
            "--wheel-dir", str(tmp_path / "wheels"), str(context),
        ],
        capture_output=True,
        timeout=WHEEL_TIMEOUT,
        check=False,
        env={**os.environ, "MAXINE_COMPILE": "0"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")

    (wheel,) = (tmp_path / "wheels").glob("maxine-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(name).decode() for name in names if name.endswith("entry_points.txt"))
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, f"the wheel lacks {package}"
    for command in COMMANDS:
        assert re.search(rf"^{re.escape(command)} = ", entry_points, re.MULTILINE), f"the wheel lacks {command}"
