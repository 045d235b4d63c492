"""
The sidecar's settings: what a pod's environment turns into, and what stops the sidecar at start.

Most checks call ``load_settings`` directly; one runs the real command to see that a bad setting
ends it with exit code 2 and a message, before it touches the network.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maxine_sidecar import SettingsError, SidecarSettings, load_settings
from tests.sidecar.conftest import SIDECAR_VARIABLES

REQUIRED = {"SERVICE_NAME": "orders", "SERVICE_PORT": "9000"}
README = Path(__file__).parents[2] / "README.md"


def settings_from(environ: dict[str, str], argv: list[str] | None = None) -> SidecarSettings:
    return load_settings(argv or [], environ={**REQUIRED, **environ})


def test_defaults_point_at_loopback_only() -> None:
    settings = settings_from({})

    assert settings.maxine_url == "http://127.0.0.1:8080"
    assert settings.healthz_host == "127.0.0.1"
    assert settings.host == "127.0.0.1"
    assert settings.readiness_url is None
    assert settings.heartbeat_transport == "http"
    assert settings.udp_port == 0
    assert settings.udp_hmac_key is None


def test_the_pod_identity_comes_from_the_downward_api_variables() -> None:
    settings = settings_from({"POD_NAME": "orders-7d9f", "POD_NAMESPACE": "shop", "POD_IP": "10.1.2.3"})

    assert settings.node_id == "orders:10.1.2.3:9000"
    assert settings.address == "10.1.2.3:9000"
    assert settings.metadata == {"pod": {"name": "orders-7d9f", "namespace": "shop"}}


def test_an_ipv6_pod_ip_is_written_the_way_the_registry_writes_it() -> None:
    settings = settings_from({"POD_IP": "FD00:0:0:0:0:0:0:0A"})

    assert settings.pod_ip == "fd00::a"
    assert settings.node_id == "orders:fd00::a:9000"
    assert settings.address == "[fd00::a]:9000"


def test_service_metadata_is_kept_and_its_own_pod_key_wins() -> None:
    settings = settings_from(
        {"SERVICE_METADATA": '{"version": "1.2", "tags": ["eu"], "pod": "mine"}', "POD_NAME": "orders-7d9f"}
    )

    assert settings.metadata == {"version": "1.2", "tags": ["eu"], "pod": "mine"}


def test_a_flag_beats_its_variable() -> None:
    settings = settings_from({"HEARTBEAT_TTL": "20"}, ["--heartbeat-ttl", "12", "--service-name", "billing"])

    assert settings.heartbeat_ttl == 12.0
    assert settings.service_name == "billing"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SERVICE_NAME": ""}, "SERVICE_NAME is required"),
        ({"SERVICE_NAME": "has space"}, "SERVICE_NAME 'has space' is not valid"),
        ({"SERVICE_PORT": ""}, "SERVICE_PORT is required"),
        ({"SERVICE_PORT": "70000"}, "SERVICE_PORT must be from 1 to 65535"),
        ({"SERVICE_PORT": "http"}, "SERVICE_PORT must be an integer"),
        ({"SERVICE_METADATA": "[1, 2]"}, "SERVICE_METADATA must be a JSON object, got list"),
        ({"SERVICE_METADATA": "{version"}, "SERVICE_METADATA must be a JSON object"),
        ({"POD_IP": "pod.local"}, "POD_IP must be an IPv4 or IPv6 address"),
        ({"MAXINE_URL": "registry:8080"}, "MAXINE_URL must be an http:// or https:// URL"),
        ({"HEARTBEAT_TTL": "0.5"}, "HEARTBEAT_TTL must be from 1 to 86400 seconds"),
        ({"HEARTBEAT_TTL": "-3"}, "HEARTBEAT_TTL must be more than 0"),
        ({"HEARTBEAT_TTL": "10", "HEARTBEAT_INTERVAL": "10"}, "must be shorter than HEARTBEAT_TTL"),
        ({"HEARTBEAT_TRANSPORT": "carrier-pigeon"}, "HEARTBEAT_TRANSPORT must be one of"),
        ({"READINESS_INTERVAL": "nan"}, "READINESS_INTERVAL must be more than 0"),
        ({"READINESS_FAILURES": "0"}, "READINESS_FAILURES must be from 1 to 100"),
        ({"HEALTHZ_PORT": "9000"}, "HEALTHZ_PORT (9000) is the app's SERVICE_PORT"),
        ({"BACKOFF_CAP": "0.1"}, "BACKOFF_CAP must be at least 0.5"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of text, json"),
        ({"UDP_PORT": "-1"}, "UDP_PORT must be from 0 to 65535"),
        ({"UDP_HMAC_KEY": "short"}, "UDP_HMAC_KEY must be at least 32 bytes"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        settings_from(environ)

    assert message in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/ready",
        "http://127.8.9.10:9000/ready",
        "http://localhost:9000/ready",
        "http://[::1]:9000/ready",
        "https://10.1.2.3:9443/healthz",
    ],
)
def test_a_readiness_url_may_target_loopback_or_the_pod_ip(url: str) -> None:
    settings = settings_from({"POD_IP": "10.1.2.3", "READINESS_URL": url})

    assert settings.readiness_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://10.1.2.4:9000/ready", "may only target loopback or the pod's own IP (10.1.2.3)"),
        ("http://169.254.169.254/latest/meta-data/", "may only target loopback"),
        ("http://orders.shop.svc:9000/ready", "must name loopback or the pod's IP as an address"),
        ("http://user:secret@127.0.0.1:9000/ready", "must not carry credentials"),
        ("ftp://127.0.0.1/ready", "must be an http:// or https:// URL"),
        ("http://127.0.0.1:99999/ready", "bad port"),
    ],
)
def test_a_readiness_url_that_could_leave_the_pod_is_refused(url: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        settings_from({"POD_IP": "10.1.2.3", "READINESS_URL": url})

    assert message in str(refused.value)


def test_secrets_are_never_in_a_repr_or_the_logged_settings() -> None:
    key = "k" * 32
    settings = settings_from({"MAXINE_TOKEN": "s3cr3t-token", "UDP_HMAC_KEY": key})

    assert settings.token == "s3cr3t-token"
    assert settings.udp_hmac_key == key
    for secret in ("s3cr3t-token", key):
        assert secret not in repr(settings)
        assert secret not in str(settings.loggable())
    assert settings.loggable()["token"] == "set"
    assert settings.loggable()["udp_hmac_key"] == "set"


def test_the_command_exits_2_with_a_message_on_a_bad_setting() -> None:
    environment = {name: value for name, value in os.environ.items() if name not in SIDECAR_VARIABLES}
    environment.update(SERVICE_PORT="9000")

    result = subprocess.run(
        [sys.executable, "-m", "maxine_sidecar"], env=environment, capture_output=True, timeout=30, check=False
    )

    assert result.returncode == 2
    assert b"maxine-sidecar: SERVICE_NAME is required" in result.stderr


def test_the_readme_documents_every_setting() -> None:
    readme = README.read_text()

    for item in dataclasses.fields(SidecarSettings):
        row = f"| `{item.metadata['env']}` | `--{item.name.replace('_', '-')}` |"
        assert row in readme, f"README's sidecar table lacks the row of {item.name}"
