"""
Authentication: with AUTH_ENABLED, every route but the public ones needs a token with the right role.

The route checks walk the app's real router, so a route any feature adds later is held to the
same table: public routes answer anyone, every other route refuses a request without a token,
with a bad token, and with a role below what it needs, and admits the role it needs.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from aiohttp import ClientTimeout, web
from aiohttp.test_utils import TestClient, TestServer

from maxine_registry.auth import SERVICE, JwtAuthenticator
from maxine_registry.errors import Unauthorized
from maxine_registry.http import create_app
from maxine_registry.http.common import OPERATIONS_KEY, SERVICEOPS_PREFIX
from maxine_registry.identity import ADMIN, READ_ONLY, Identity
from maxine_registry.operations import Operations
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings, SettingsError, load_settings
from tests.conftest import MaxineProcessFactory
from tests.registry.conftest import ADMIN_PASSWORD, JWT_TEST_SECRET, READER_PASSWORD

Client = TestClient[object, object]

# The specification, as the README's Authentication table states it. Patterns without the serviceops prefix.
PUBLIC = {
    ("GET", "/health"),
    ("GET", "/"),
    ("POST", "/signin"),
    ("POST", "/refresh-token"),
    ("GET", "/dashboard"),
    ("GET", "/dependency-graph"),
    ("GET", "/graphql"),
}
PUBLIC_PREFIXES = ("/dashboard/assets/", "/dependency-graph/", "/graphql/")
FOR_SERVICES = {
    ("POST", "/register"),
    ("POST", "/heartbeat"),
    ("PUT", "/heartbeat"),
    ("DELETE", "/deregister"),
    ("POST", "/record-response-time"),
}
ADMIN_READS = {"/backup", "/heapdump", "/audit/export", "/events"}
# The lowest role that may call a route, and the roles below it.
ROLES_BELOW = {"read": [], "service": [READ_ONLY], "admin": [READ_ONLY, SERVICE]}
LOWEST_ROLE = {"read": READ_ONLY, "service": SERVICE, "admin": ADMIN}
# Methods tried on routes that take any method (the proxy).
ANY_METHOD_SAMPLES = ("GET", "POST", "DELETE")


def expected_access(method: str, pattern: str) -> str:
    """'public', 'read', 'service' or 'admin' for a route, by the README's table."""
    method = "GET" if method == "HEAD" else method
    path = pattern.removeprefix(SERVICEOPS_PREFIX) or "/"
    if (method, path) in PUBLIC or (method == "GET" and path.startswith(PUBLIC_PREFIXES)):
        return "public"
    if path.startswith("/proxy/"):
        return "read" if method == "GET" else "service"
    if (method, path) in FOR_SERVICES:
        return "service"
    if method == "GET":
        return "admin" if path in ADMIN_READS else "read"
    return "admin"


def routes_of(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, pattern, a path that matches it) for every route of the app."""
    found: list[tuple[str, str, str]] = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        pattern = resource.canonical
        path = re.sub(r"\{[^}]*\}", "sample", pattern)
        if isinstance(resource, web.StaticResource):
            path = pattern.rstrip("/") + "/sample"
        methods = ANY_METHOD_SAMPLES if route.method == "*" else (route.method,)
        found.extend((method, pattern, path) for method in methods)
    return sorted(set(found))


def protected_routes(app: web.Application) -> list[tuple[str, str, str, str]]:
    return [
        (method, pattern, path, access)
        for method, pattern, path in routes_of(app)
        if (access := expected_access(method, pattern)) != "public"
    ]


async def call(client: Client, method: str, path: str, *, token: str | None = None) -> tuple[int, Any, Any]:
    """Status, decoded JSON (None without a JSON body) and headers of one request; the body is not awaited past that."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with client.request(method, path, headers=headers, timeout=ClientTimeout(total=10)) as response:
        document = await response.json() if response.content_type == "application/json" else None
        return response.status, document, response.headers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "mallory", "roles": [ADMIN], "iat": now, "exp": now + 600, "iss": "maxine", **overrides}


# Every route, by the table.


async def test_the_app_has_protected_routes_for_each_access_level(auth_api: Client) -> None:
    levels = {access for *_, access in protected_routes(auth_api.app)}

    assert levels == {"read", "service", "admin"}


async def test_every_protected_route_refuses_a_request_without_a_token(auth_api: Client) -> None:
    wrong = []
    for method, pattern, path, _ in protected_routes(auth_api.app):
        status, document, headers = await call(auth_api, method, path)
        code = document.get("code") if isinstance(document, dict) else None
        if (
            status != 401
            or (method != "HEAD" and code != "missing_token")
            or "Bearer" not in headers.get("WWW-Authenticate", "")
        ):
            wrong.append(f"{method} {pattern}: {status} {document}")

    assert wrong == [], "reachable without a token:\n" + "\n".join(wrong)


async def test_every_protected_route_refuses_a_forged_token(auth_api: Client) -> None:
    forged = jwt.encode(claims(), "another-key-of-at-least-thirty-two-bytes!", algorithm="HS256")

    wrong = []
    for method, pattern, path, _ in protected_routes(auth_api.app):
        status, document, _headers = await call(auth_api, method, path, token=forged)
        if status != 401 or (method != "HEAD" and document.get("code") != "invalid_token"):
            wrong.append(f"{method} {pattern}: {status} {document}")

    assert wrong == [], "reachable with a forged token:\n" + "\n".join(wrong)


async def test_every_protected_route_refuses_roles_below_what_it_needs(
    auth_api: Client, tokens: dict[str, str]
) -> None:
    wrong = []
    for method, pattern, path, access in protected_routes(auth_api.app):
        for role in ROLES_BELOW[access]:
            status, document, _headers = await call(auth_api, method, path, token=tokens[role])
            if status != 403 or (method != "HEAD" and document.get("code") != "forbidden"):
                wrong.append(f"{method} {pattern} as {role}: {status} {document}")

    assert wrong == [], "reachable with too low a role:\n" + "\n".join(wrong)


async def test_every_protected_route_admits_the_lowest_role_it_needs(auth_api: Client, tokens: dict[str, str]) -> None:
    wrong = []
    for method, pattern, path, access in protected_routes(auth_api.app):
        status, document, _headers = await call(auth_api, method, path, token=tokens[LOWEST_ROLE[access]])
        if status in (401, 403):
            wrong.append(f"{method} {pattern} as {LOWEST_ROLE[access]}: {status} {document}")

    assert wrong == [], "refused to the role that should pass:\n" + "\n".join(wrong)


async def test_public_routes_answer_without_a_token(auth_api: Client) -> None:
    wrong = []
    for method, pattern, path in routes_of(auth_api.app):
        if expected_access(method, pattern) == "public":
            status, document, _headers = await call(auth_api, method, path)
            if status in (401, 403):
                wrong.append(f"{method} {pattern}: {status} {document}")

    assert wrong == []


async def test_a_route_added_after_the_auth_feature_gets_the_safe_default(auth_settings: Settings) -> None:
    app = create_app(Operations(registry=Registry(), settings=auth_settings))

    async def feature(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_route("GET", "/feature-added-later", feature)
    app.router.add_route("POST", "/feature-added-later", feature)
    authenticator = app[OPERATIONS_KEY].authenticator
    assert authenticator is not None
    reader_token = authenticator.issue(Identity(subject="reader", roles=frozenset({READ_ONLY}), verified=True))

    async with TestClient(TestServer(app)) as client:
        no_token = await client.get("/feature-added-later")
        reader_get = await client.get("/feature-added-later", headers=bearer(reader_token))
        reader_post = await client.post("/feature-added-later", headers=bearer(reader_token))

    assert no_token.status == 401
    assert reader_get.status == 200
    assert reader_post.status == 403


async def test_a_graphql_query_by_get_needs_a_reader_though_the_page_is_public(
    auth_api: Client, tokens: dict[str, str]
) -> None:
    page = await auth_api.get("/graphql")
    anonymous_query = await auth_api.get("/graphql", params={"query": "{ services { name } }"})
    reader_query = await auth_api.get(
        "/graphql", params={"query": "{ services { name } }"}, headers=bearer(tokens[READ_ONLY])
    )

    assert page.status == 200
    assert anonymous_query.status == 401
    assert reader_query.status not in (401, 403)


async def test_a_websocket_may_authenticate_in_its_first_message(auth_api: Client, tokens: dict[str, str]) -> None:
    async with auth_api.ws_connect("/ws") as socket:
        await socket.send_json({"auth": tokens[READ_ONLY]})
        answer = await socket.receive_json(timeout=5)

    assert answer["type"] == "authenticated"


# Tokens the middleware must refuse.


def _none_token() -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims())}."


def _tampered_token(valid: str) -> str:
    header, _payload, signature = valid.split(".")
    return f"{header}.{_b64(claims(sub='test-read-only', roles=[ADMIN]))}.{signature}"


BAD_TOKENS: dict[str, Callable[[str], str]] = {
    "alg none": lambda valid: _none_token(),
    "HS512 with the right key": lambda valid: jwt.encode(claims(), JWT_TEST_SECRET, algorithm="HS512"),
    "signed with another key": lambda valid: jwt.encode(claims(), "x" * 40, algorithm="HS256"),
    "tampered payload": _tampered_token,
    "expired": lambda valid: jwt.encode(
        claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), JWT_TEST_SECRET, algorithm="HS256"
    ),
    "another issuer": lambda valid: jwt.encode(claims(iss="someone-else"), JWT_TEST_SECRET, algorithm="HS256"),
    "an unknown role": lambda valid: jwt.encode(claims(roles=["root"]), JWT_TEST_SECRET, algorithm="HS256"),
    "no expiry": lambda valid: jwt.encode(
        {key: value for key, value in claims().items() if key != "exp"}, JWT_TEST_SECRET, algorithm="HS256"
    ),
    "not a JWT": lambda valid: "definitely-not-a-token",
}


# Signing with HS512 and a short key is the point of one case, not a mistake to warn about.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_a_bad_token_is_refused_with_invalid_token(auth_api: Client, tokens: dict[str, str], kind: str) -> None:
    token = BAD_TOKENS[kind](tokens[READ_ONLY])

    response = await auth_api.get("/servers", headers=bearer(token))

    assert response.status == 401
    assert (await response.json())["code"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_an_authorization_header_that_is_not_bearer_is_refused(auth_api: Client) -> None:
    response = await auth_api.get("/servers", headers={"Authorization": f"Basic {ADMIN_PASSWORD}"})

    assert response.status == 401
    assert (await response.json())["code"] == "invalid_token"


async def test_a_token_stops_working_when_it_expires() -> None:
    now = [1_000_000.0]
    authenticator = JwtAuthenticator(secret=JWT_TEST_SECRET, lifetime=60, users=[], wall=lambda: now[0])
    token = authenticator.issue(Identity(subject="svc", roles=frozenset({SERVICE}), verified=True))

    assert authenticator.verify(token).subject == "svc"
    now[0] += 61
    with pytest.raises(Unauthorized, match="expired"):
        authenticator.verify(token)


# Signing in, refreshing, minting.


async def test_the_admin_signs_in_and_the_token_opens_admin_routes(auth_api: Client) -> None:
    response = await auth_api.post("/signin", json={"username": "admin", "password": ADMIN_PASSWORD})
    answer = await response.json()
    backup = await auth_api.get("/backup", headers=bearer(answer["token"]))

    assert response.status == 200
    assert answer["roles"] == [ADMIN] and answer["subject"] == "admin"
    assert answer["expiresAt"] > time.time() + 3000
    assert backup.status == 200


async def test_the_reader_signs_in_and_may_read_but_not_change(auth_api: Client) -> None:
    response = await auth_api.post("/signin", json={"username": "readonly", "password": READER_PASSWORD})
    token = (await response.json())["token"]

    listing = await auth_api.get("/servers", headers=bearer(token))
    change = await auth_api.post("/traffic/set", headers=bearer(token), json={})

    assert listing.status == 200
    assert change.status == 403


@pytest.mark.parametrize(
    ("username", "password"),
    [("admin", "wrong password"), ("nobody", ADMIN_PASSWORD), ("readonly", ADMIN_PASSWORD), ("admin", "x" * 100)],
)
async def test_wrong_credentials_get_one_and_the_same_401(auth_api: Client, username: str, password: str) -> None:
    response = await auth_api.post("/signin", json={"username": username, "password": password})

    assert response.status == 401
    assert await response.json() == {"error": "Wrong user name or password.", "code": "invalid_credentials"}


@pytest.mark.parametrize("body", [{}, {"username": "admin"}, {"username": "admin", "password": 7}, ["admin"]])
async def test_a_malformed_sign_in_is_refused_with_400(auth_api: Client, body: object) -> None:
    response = await auth_api.post("/signin", json=body)

    assert response.status == 400
    assert (await response.json())["code"] == "invalid_input"


async def test_refreshing_a_valid_token_gives_a_new_one_for_the_same_subject(
    auth_api: Client, tokens: dict[str, str]
) -> None:
    response = await auth_api.post("/refresh-token", json={"token": tokens[SERVICE]})
    answer = await response.json()
    registered = await auth_api.post(
        "/register", headers=bearer(answer["token"]), json={"serviceName": "orders", "host": "10.0.0.5", "port": 80}
    )

    assert response.status == 200
    assert (answer["subject"], answer["roles"]) == ("test-service", [SERVICE])
    assert answer["token"] != tokens[SERVICE]
    assert registered.status == 200


async def test_a_token_may_be_refreshed_from_the_authorization_header(auth_api: Client, tokens: dict[str, str]) -> None:
    response = await auth_api.post("/refresh-token", headers=bearer(tokens[ADMIN]))

    assert response.status == 200
    assert (await response.json())["subject"] == "test-admin"


@pytest.mark.parametrize("kind", ["expired", "signed with another key", "alg none"])
async def test_refreshing_a_bad_token_is_refused(auth_api: Client, tokens: dict[str, str], kind: str) -> None:
    response = await auth_api.post("/refresh-token", json={"token": BAD_TOKENS[kind](tokens[ADMIN])})

    assert response.status == 401
    assert (await response.json())["code"] == "invalid_token"


async def test_an_admin_mints_a_service_token_that_registers_but_does_not_administer(
    auth_api: Client, tokens: dict[str, str]
) -> None:
    minted = await auth_api.post(
        "/tokens", headers=bearer(tokens[ADMIN]), json={"subject": "orders", "role": "service", "expiresIn": "30d"}
    )
    answer = await minted.json()
    token = answer["token"]

    registered = await auth_api.post(
        "/register", headers=bearer(token), json={"serviceName": "orders", "host": "10.0.0.5", "port": 80}
    )
    heartbeat = await auth_api.post("/heartbeat", headers=bearer(token), json={"nodeId": "orders:10.0.0.5:80"})
    backup = await auth_api.get("/backup", headers=bearer(token))

    assert minted.status == 200
    assert answer["roles"] == [SERVICE]
    assert 29 * 86400 < answer["expiresAt"] - time.time() <= 30 * 86400
    assert (registered.status, heartbeat.status, backup.status) == (200, 200, 403)


@pytest.mark.parametrize(
    "body",
    [
        {"subject": "orders", "role": "admin"},
        {"subject": "orders", "expiresIn": "400d"},
        {"subject": "orders", "expiresIn": "soon"},
        {"subject": ""},
        {"role": "service"},
    ],
)
async def test_minting_refuses_admin_tokens_and_bad_lifetimes(
    auth_api: Client, tokens: dict[str, str], body: dict[str, Any]
) -> None:
    response = await auth_api.post("/tokens", headers=bearer(tokens[ADMIN]), json=body)

    assert response.status == 400


async def test_with_auth_off_signing_in_says_so_and_nothing_needs_a_token(
    app_client: Callable[..., Awaitable[Client]],
) -> None:
    api = await app_client(Settings())

    sign_in = await api.post("/signin", json={"username": "admin", "password": ADMIN_PASSWORD})
    listing = await api.get("/servers")

    assert sign_in.status == 404
    assert (await sign_in.json())["code"] == "auth_disabled"
    assert listing.status == 200


# Settings: refuse to start without what auth needs, and never show a secret.


def _auth_environ(password_hashes: dict[str, str], **overrides: str) -> dict[str, str]:
    return {
        "AUTH_ENABLED": "true",
        "JWT_SECRET": JWT_TEST_SECRET,
        "ADMIN_PASSWORD_HASH": password_hashes["admin"],
        **overrides,
    }


@pytest.mark.parametrize(
    ("overrides", "mentions"),
    [
        ({"JWT_SECRET": ""}, "JWT_SECRET"),
        ({"JWT_SECRET": "too-short-to-sign-with"}, "JWT_SECRET"),
        ({"ADMIN_PASSWORD_HASH": ""}, "ADMIN_PASSWORD_HASH"),
        ({"ADMIN_PASSWORD_HASH": "plain-text-password"}, "ADMIN_PASSWORD_HASH"),
        ({"READONLY_PASSWORD_HASH": "plain"}, "READONLY_PASSWORD_HASH"),
        ({"JWT_EXPIRES_IN": "forever"}, "JWT_EXPIRES_IN"),
    ],
)
def test_auth_refuses_to_start_without_a_strong_secret_and_a_password_hash(
    password_hashes: dict[str, str], overrides: dict[str, str], mentions: str
) -> None:
    with pytest.raises(SettingsError, match=mentions) as raised:
        load_settings([], environ=_auth_environ(password_hashes, **overrides))

    assert "too-short-to-sign-with" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600), ("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 604800)]
)
def test_token_lifetimes_are_seconds_or_a_number_with_a_unit(
    password_hashes: dict[str, str], text: str, seconds: float
) -> None:
    settings = load_settings([], environ=_auth_environ(password_hashes, JWT_EXPIRES_IN=text))

    assert JwtAuthenticator.from_settings(settings).lifetime == seconds


def test_settings_as_logged_hide_every_secret(auth_settings: Settings) -> None:
    public = auth_settings.public()
    text = json.dumps(public) + repr(auth_settings)

    assert JWT_TEST_SECRET not in text
    assert auth_settings.admin_password_hash not in text
    assert auth_settings.readonly_password_hash not in text
    assert public["jwt_secret"] == "***"


def test_the_start_log_line_shows_no_secret(
    maxine_process: MaxineProcessFactory, password_hashes: dict[str, str]
) -> None:
    server = maxine_process(
        args=[
            "--log-level",
            "info",
            "--log-format",
            "json",
            "--auth-enabled",
            "--jwt-secret",
            JWT_TEST_SECRET,
            "--admin-password-hash",
            password_hashes["admin"],
        ]
    )

    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    start = next(line for line in lines if line["message"].startswith("Maxine is listening"))

    assert start["settings"]["auth_enabled"] is True
    assert start["settings"]["jwt_secret"] == "***"
    assert JWT_TEST_SECRET not in server.logs()
    assert password_hashes["admin"] not in server.logs()
