"""The operator's registry client once the operator is stopping: writes are refused as "not now", never a crash."""

from __future__ import annotations

import pytest

from maxine_operator.registry_api import RegistryApi, RegistryUnavailable
from tests.conftest import find_free_loopback_port


async def test_writes_after_close_are_refused_as_unavailable() -> None:
    # Nothing listens on this port, and nothing is sent: the refusal comes before any request.
    api = RegistryApi(base_url=f"http://127.0.0.1:{find_free_loopback_port()}", token=None, timeout=1.0)
    await api.close()

    with pytest.raises(RegistryUnavailable) as refused:
        await api.call("POST", "/api/maxine/serviceops/intention/set", json={"source": "a", "destination": "b"})
    with pytest.raises(RegistryUnavailable):
        await api.remove("DELETE", "/api/maxine/serviceops/intention", params={"source": "a", "destination": "b"})

    assert refused.value.code == "stopping"
    assert "stopping" in str(refused.value)
