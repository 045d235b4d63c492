"""Settings: flags beat environment variables, which beat defaults; bad values stop the start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from maxine_registry import __version__
from maxine_registry.settings import Settings, SettingsError, build_parser, load_settings


def test_defaults_need_no_configuration() -> None:
    settings = load_settings([], environ={})

    assert settings == Settings()
    assert (settings.host, settings.port, settings.heartbeat_timeout) == ("127.0.0.1", 8080, 30.0)


def test_environment_variables_set_values() -> None:
    environ = {"PORT": "9000", "HEARTBEAT_TIMEOUT": "5", "LOG_FORMAT": "json", "HEARTBEAT_EVENTS": "yes"}

    settings = load_settings([], environ=environ)

    assert (settings.port, settings.heartbeat_timeout, settings.log_format) == (9000, 5.0, "json")
    assert settings.heartbeat_events is True


def test_flags_beat_environment_variables() -> None:
    settings = load_settings(
        ["--port", "9100", "--no-heartbeat-events"], environ={"PORT": "9000", "HEARTBEAT_EVENTS": "1"}
    )

    assert settings.port == 9100
    assert settings.heartbeat_events is False


@pytest.mark.parametrize(
    ("environ", "mentions"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "port"),
        ({"HEARTBEAT_TIMEOUT": "0"}, "heartbeat timeout"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"HEARTBEAT_EVENTS": "maybe"}, "HEARTBEAT_EVENTS"),
        ({"MAX_BODY_BYTES": "0"}, "max_body_bytes"),
    ],
)
def test_bad_values_are_named_in_the_error(environ: dict[str, str], mentions: str) -> None:
    with pytest.raises(SettingsError, match=mentions):
        load_settings([], environ=environ)


def test_help_names_every_environment_variable() -> None:
    text = build_parser().format_help()

    for env in ("MAXINE_HOST", "PORT", "HEARTBEAT_TIMEOUT", "LOG_FORMAT", "MAX_BODY_BYTES", "MAX_METADATA_BYTES"):
        assert env in text


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()

    for item in dataclasses.fields(Settings):
        row = f"| `--{item.name.replace('_', '-')}` | `{item.metadata['env']}` |"
        assert row in readme, f"README lacks the configuration row for {item.name}"


def test_version_flag_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])

    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"maxine {__version__}"
