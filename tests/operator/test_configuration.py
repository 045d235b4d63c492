"""The command line and the pieces of the operator that are plain functions: config, error reading, endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from maxine_client import MaxineError, RegistryUnreachable
from maxine_operator.catalog import Endpoint, ready_endpoints
from maxine_operator.cli import build_parser, config_from_args, main
from maxine_operator.config import OperatorConfig
from maxine_operator.registry_api import RegistryRejected, RegistryUnavailable, classify
from maxine_operator.status import Condition, merge_conditions


def test_flags_and_environment_make_the_config_and_flags_win() -> None:
    env = {
        "MAXINE_URL": "http://maxine.maxine-system:8080",
        "MAXINE_OPERATOR_MESHES": "istio,smi",
        "MAXINE_OPERATOR_NAMESPACES": "shop, billing",
        "MAXINE_OPERATOR_PEERING": "true",
        "MAXINE_OPERATOR_RESYNC_INTERVAL": "45",
        "MAXINE_OPERATOR_PEERING_PRIORITY": "7",
    }

    config = config_from_args(["--resync-interval", "10", "--no-catalog"], env)

    assert config.registry_url == "http://maxine.maxine-system:8080"
    assert config.meshes == ("istio", "smi")
    assert config.namespaces == ("shop", "billing")
    assert config.peering is True and config.peering_priority == 7
    assert config.resync_interval == 10.0
    assert config.catalog is False


def test_no_namespaces_means_the_whole_cluster() -> None:
    config = config_from_args([], {})

    assert config.namespaces == () and config.clusterwide


def test_the_token_comes_from_a_file_or_the_environment_and_never_shows(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-from-file\n")

    from_file = config_from_args(["--token-file", str(token_file)], {"MAXINE_TOKEN": "s3cret-from-env"})
    from_env = config_from_args([], {"MAXINE_TOKEN": "s3cret-from-env"})

    assert from_file.registry_token == "s3cret-from-file"
    assert from_env.registry_token == "s3cret-from-env"
    assert "s3cret" not in repr(from_file) and "s3cret" not in repr(from_env)
    assert not any(action.dest == "token" for action in build_parser({})._actions)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"meshes": ("istio", "consul")}, "Unknown mesh"),
        ({"resync_interval": 0}, "resync_interval"),
        ({"webhook": True}, "webhook_cert"),
        ({"catalog_ttl": 0.5}, "catalog_ttl"),
    ],
)
def test_impossible_settings_are_refused_with_the_reason(options: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        OperatorConfig(**options)  # type: ignore[arg-type]


def test_the_command_refuses_a_bad_flag_value_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--meshes", "nonsense"]) == 2
    assert "Unknown mesh" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RegistryUnreachable("no answer", attempts=2), RegistryUnavailable),
        (MaxineError("busy", status=503, code="unavailable"), RegistryUnavailable),
        (MaxineError("slow down", status=429, code="rate_limited"), RegistryUnavailable),
        (MaxineError("who are you", status=401, code="unauthorized"), RegistryUnavailable),
        (MaxineError("bad", status=400, code="invalid_input"), RegistryRejected),
        (MaxineError("too big", status=413, code="value_too_large"), RegistryRejected),
        (MaxineError("full", status=409, code="too_many_keys"), RegistryRejected),
    ],
)
def test_registry_errors_are_read_as_temporary_or_permanent(error: MaxineError, kind: type) -> None:
    assert isinstance(classify(error), kind)


def test_only_ready_addresses_with_a_port_are_endpoints() -> None:
    slices = [
        {
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9100}, {"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "targetRef": {"name": "a"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.3"]},  # no conditions: ready, as the API says
            ],
        },
        {"addressType": "FQDN", "ports": [{"name": "http", "port": 8080}], "endpoints": [{"addresses": ["x.example"]}]},
        {"addressType": "IPv6", "ports": [], "endpoints": [{"addresses": ["fd00::1"]}]},
    ]

    assert ready_endpoints(slices, port="http") == [
        Endpoint(host="10.0.0.1", port=8080, pod="a"),
        Endpoint(host="10.0.0.3", port=8080),
    ]
    assert {endpoint.port for endpoint in ready_endpoints(slices, port=None)} == {9100}
    assert {endpoint.port for endpoint in ready_endpoints(slices, port="7000")} == {7000}


def test_a_condition_keeps_its_transition_time_until_its_status_flips() -> None:
    first = merge_conditions(None, [Condition("Synced", False, "RegistryUnavailable", "down")], generation=1, now="T1")
    same = merge_conditions(
        first, [Condition("Synced", False, "RegistryUnavailable", "still down")], generation=1, now="T2"
    )
    flipped = merge_conditions(same, [Condition("Synced", True, "Synced", "up")], generation=2, now="T3")

    assert first[0]["lastTransitionTime"] == "T1"
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["message"] == "still down"
    assert flipped[0]["lastTransitionTime"] == "T3" and flipped[0]["observedGeneration"] == 2
