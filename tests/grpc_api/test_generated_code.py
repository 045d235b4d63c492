"""The generated gRPC code in the package is what ``api/generate.py`` makes of ``api/maxine.proto`` today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
GENERATOR = REPOSITORY / "api" / "generate.py"
PACKAGE = REPOSITORY / "registry" / "maxine_registry" / "grpc_api"
GENERATED = ("maxine_pb2.py", "maxine_pb2.pyi", "maxine_pb2_grpc.py", "maxine_pb2_grpc.pyi")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the code generated afresh from the proto."""
    out = tmp_path_factory.mktemp("generated")
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("name", GENERATED)
def test_the_committed_generated_code_matches_the_proto(regenerated: Path, name: str) -> None:
    fresh = (regenerated / name).read_text()
    committed = (PACKAGE / name).read_text()

    assert fresh == committed, f"{name} is stale: run `python api/generate.py` and commit the result."
