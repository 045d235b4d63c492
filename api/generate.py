"""
Generate the Python code of ``api/maxine.proto`` into ``registry/maxine_registry/grpc_api/``.

Four files come out: the messages (``maxine_pb2.py``) and the service stubs (``maxine_pb2_grpc.py``)
from grpcio-tools, and their type stubs (``.pyi``) from mypy-protobuf. All four are committed, so
that installing Maxine needs no code generator; a test regenerates them into a temporary folder
and fails when they differ from the committed ones, which keeps them current with the proto.

protoc names the module a generated file imports after the path of the proto below its include
root. The proto is therefore compiled from a temporary copy at ``maxine_registry/grpc_api/``,
which makes ``maxine_pb2_grpc`` import ``maxine_registry.grpc_api.maxine_pb2`` and leaves the
generated code exactly as protoc wrote it. The output depends on the exact versions of
grpcio-tools and mypy-protobuf, which the ``test`` extra pins.

Run it from anywhere: ``python api/generate.py`` (or ``--out DIR`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
PROTO = API_DIR / "maxine.proto"
PACKAGE_PATH = Path("maxine_registry") / "grpc_api"
DEFAULT_OUT = API_DIR.parent / "registry" / PACKAGE_PATH
GENERATED = ("maxine_pb2.py", "maxine_pb2.pyi", "maxine_pb2_grpc.py", "maxine_pb2_grpc.pyi")
PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")
PROTOC_TIMEOUT = 60.0


def find_plugin(name: str) -> str:
    """A protoc plugin installed with this Python (its scripts folder first, then PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed; install the test extra: pip install -e '.[test]'.")
    return found


def generate(*, out: Path) -> list[Path]:
    """Compile the proto and put the generated files in ``out``; return their paths."""
    # Imported here: grpcio-tools is a development dependency, not needed to run Maxine.
    import grpc_tools  # noqa: PLC0415

    includes = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="maxine-protoc-") as scratch:
        root = Path(scratch)
        source = root / "src" / PACKAGE_PATH / PROTO.name
        source.parent.mkdir(parents=True)
        shutil.copyfile(PROTO, source)
        target = root / "out"
        target.mkdir()

        command = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"--proto_path={root / 'src'}", f"--proto_path={includes}",
            f"--plugin=protoc-gen-mypy={find_plugin(PLUGINS[0])}",
            f"--plugin=protoc-gen-mypy_grpc={find_plugin(PLUGINS[1])}",
            f"--python_out={target}", f"--grpc_python_out={target}",
            f"--mypy_out={target}", f"--mypy_grpc_out={target}",
            str(PACKAGE_PATH / PROTO.name),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=PROTOC_TIMEOUT, check=False)
        if result.returncode != 0:
            raise SystemExit(f"protoc failed with {result.returncode}:\n{result.stderr}")

        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            shutil.copyfile(target / PACKAGE_PATH / name, out / name)
            written.append(out / name)
        return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    for path in generate(out=args.out):
        print(path)


if __name__ == "__main__":
    main()
