"""The ``maxine`` command as an operator meets it: start-up line, bad settings, graceful shutdown."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from tests.conftest import LOOPBACK, MaxineProcessFactory, http_json


def run_maxine(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maxine_registry", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_lists_flags_and_environment_variables() -> None:
    result = run_maxine("--help")

    assert result.returncode == 0
    assert "--heartbeat-timeout" in result.stdout
    assert "HEARTBEAT_TIMEOUT" in result.stdout


def test_a_bad_setting_stops_the_start_with_a_clear_message() -> None:
    result = run_maxine(env={"PORT": "eighty"})

    assert result.returncode == 2
    assert "PORT" in result.stderr and "eighty" in result.stderr


def test_a_port_in_use_is_reported_and_exits_non_zero() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_maxine("--host", LOOPBACK, "--port", str(port))

    assert result.returncode == 1
    assert f"cannot listen on {LOOPBACK}:{port}" in result.stderr


def test_a_udp_port_in_use_is_reported_as_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        udp_port = taken.getsockname()[1]

        result = run_maxine("--host", LOOPBACK, "--port", "0", "--udp-port", str(udp_port))

    assert result.returncode == 1
    assert f"cannot listen on UDP {LOOPBACK}:{udp_port}" in result.stderr


def test_the_start_log_line_says_where_it_listens_with_which_settings(maxine_process: MaxineProcessFactory) -> None:
    server = maxine_process(args=["--log-level", "info", "--log-format", "json", "--heartbeat-timeout", "7"])

    lines = [json.loads(line) for line in server.logs().splitlines()]
    listening = [line for line in lines if line["message"].startswith("Maxine is listening")]

    assert len(listening) == 1
    assert listening[0]["level"] == "info"
    assert listening[0]["message"] == f"Maxine is listening on http://{LOOPBACK}:{server.port}."
    assert listening[0]["settings"]["heartbeat_timeout"] == 7.0
    assert listening[0]["settings"]["port"] == server.port


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """A backend that takes a second to answer, so a proxied request is in flight for that long."""

    def do_GET(self) -> None:
        time.sleep(1.0)
        body = b"slow but sure"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_sigterm_lets_in_flight_requests_finish_and_exits_zero(maxine_process: MaxineProcessFactory) -> None:
    server = maxine_process()
    backend = http.server.ThreadingHTTPServer((LOOPBACK, 0), SlowHandler)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    registration = {"serviceName": "slow", "host": LOOPBACK, "port": backend.server_address[1]}
    assert http_json(server.base_url + "/register", method="POST", body=registration)[0] == 200

    answers: list[bytes] = []

    def call_through_proxy() -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(server.base_url + "/proxy/slow/work", timeout=10) as response:
            answers.append(response.read())

    try:
        caller = threading.Thread(target=call_through_proxy)
        caller.start()
        time.sleep(0.4)
        server.process.send_signal(signal.SIGTERM)
        caller.join(timeout=15)
    finally:
        backend.shutdown()

    assert answers == [b"slow but sure"]
    assert server.process.wait(timeout=15) == 0
    with socket.socket() as probe:
        assert probe.connect_ex((LOOPBACK, server.port)) != 0, "the registry still accepts connections after exiting"
