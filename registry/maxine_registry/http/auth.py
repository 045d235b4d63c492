"""
Authentication over HTTP: sign-in, token refresh and minting, and who may call which route.

With ``AUTH_ENABLED`` on, a middleware decides for every request, before any handler runs, what
access its route needs, and refuses the request unless its ``Authorization: Bearer`` token proves
a role that has it: 401 ``missing_token`` or ``invalid_token`` (with a ``WWW-Authenticate``
header), or 403 ``forbidden``. A verified identity is stored on the request under
``IDENTITY_KEY``, where access rules, rate limits and the audit log find it.

The decision is a table of rules matched on (method, route pattern), first match wins, with both
API surfaces sharing one rule (the serviceops prefix is stripped). Routes are added by many
features; a route no rule names gets the safe default: a reader's role for GET and HEAD, admin
for every other method. So a new route is never public by accident, only by a rule here.
Requests that match no route at all pass through to their 404 or 405.

Two exceptions to "a token in the header": a WebSocket upgrade without one is let through, since
the WebSocket protocol authenticates in its first message (through ``Operations.authenticator``);
and the GraphQL page is public as a page, while a GraphQL query sent with GET needs a reader.

With auth off, the sign-in routes answer 404 ``auth_disabled`` and no middleware is installed.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

from maxine_registry.auth import (
    MAX_TOKEN_LIFETIME,
    MIN_TOKEN_LIFETIME,
    SERVICE,
    JwtAuthenticator,
    SignInFailures,
)
from maxine_registry.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from maxine_registry.http.common import (
    AUDIT_DETAIL_KEY,
    IDENTITY_KEY,
    OPERATIONS_KEY,
    SERVICEOPS_PREFIX,
    Handler,
    error_response,
    read_json,
    respond,
)
from maxine_registry.identity import ADMIN, READ_ONLY, Identity
from maxine_registry.operations import Operations, ok
from maxine_registry.settings import SettingsError, parse_duration

logger = logging.getLogger(__name__)


class Access(enum.Enum):
    PUBLIC = "public"
    # Public as a page; a request with a query string (a GraphQL query) needs READ.
    PAGE = "page"
    READ = "read-only"
    SERVICE = "service"
    ADMIN = "admin"


ALLOWED_ROLES: dict[Access, frozenset[str]] = {
    Access.READ: frozenset({READ_ONLY, SERVICE, ADMIN}),
    Access.SERVICE: frozenset({SERVICE, ADMIN}),
    Access.ADMIN: frozenset({ADMIN}),
}

ANY_METHOD: frozenset[str] = frozenset()
READS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Rule:
    """Requests with one of ``methods`` (any, if empty) on ``pattern`` need ``access``.

    A pattern ending in ``/*`` covers every route below it.
    """

    methods: frozenset[str]
    pattern: str
    access: Access

    def matches(self, method: str, pattern: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.pattern.endswith("/*"):
            return pattern.startswith(self.pattern[:-1]) or pattern == self.pattern[:-2]
        return pattern == self.pattern


def _rule(methods: str, pattern: str, access: Access) -> Rule:
    return Rule(frozenset(methods.split(",")) if methods != "*" else ANY_METHOD, pattern, access)


# The route table. Patterns are aiohttp route patterns without the serviceops prefix.
RULES: tuple[Rule, ...] = (
    # Anyone: liveness, the index, signing in, and the HTML pages with their static files (the
    # data those pages show comes from protected routes).
    _rule("GET,HEAD", "/health", Access.PUBLIC),
    _rule("GET,HEAD", "/", Access.PUBLIC),
    _rule("POST", "/signin", Access.PUBLIC),
    _rule("POST", "/refresh-token", Access.PUBLIC),
    _rule("GET,HEAD", "/dashboard", Access.PUBLIC),
    _rule("GET,HEAD", "/dashboard/assets/*", Access.PUBLIC),
    _rule("GET,HEAD", "/dependency-graph", Access.PUBLIC),
    _rule("GET,HEAD", "/dependency-graph/*", Access.PUBLIC),
    _rule("GET,HEAD", "/graphql", Access.PAGE),
    _rule("GET,HEAD", "/graphql/*", Access.PUBLIC),
    # Workloads: their own instances' lifecycle and outcome reports.
    _rule("POST", "/register", Access.SERVICE),
    _rule("POST,PUT", "/heartbeat", Access.SERVICE),
    _rule("DELETE", "/deregister", Access.SERVICE),
    _rule("POST", "/record-response-time", Access.SERVICE),
    # The proxy: reading through it is reading; anything else acts on a service's behalf.
    _rule("GET,HEAD", "/proxy/*", Access.READ),
    _rule("*", "/proxy/*", Access.SERVICE),
    # Sensitive reads: the whole state, the process's memory, the audit trail, the event history.
    _rule("GET,HEAD", "/backup", Access.ADMIN),
    _rule("GET,HEAD", "/heapdump", Access.ADMIN),
    _rule("GET,HEAD", "/audit/export", Access.ADMIN),
    _rule("GET,HEAD", "/events", Access.ADMIN),
    # Named for the README's table; the default below would give them the same.
    _rule("POST", "/restore", Access.ADMIN),
    _rule("POST", "/tokens", Access.ADMIN),
    # TODO: LATER: let readers POST GraphQL queries once the GraphQL layer checks the role per operation.
    _rule("POST", "/graphql", Access.ADMIN),
)

# Cached decisions per (method, pattern); more than this many distinct pairs means odd methods.
MAX_CACHED_DECISIONS = 4096
TOKEN_SUBJECT_MAX_LENGTH = 256


def required_access(method: str, pattern: str | None, *, rules: Sequence[Rule] = RULES) -> Access:
    """What a request needs: the first matching rule, else read for GET and HEAD and admin for the rest."""
    if pattern is None:
        return Access.PUBLIC
    if pattern.startswith(SERVICEOPS_PREFIX + "/"):
        pattern = pattern[len(SERVICEOPS_PREFIX) :]
    for rule in rules:
        if rule.matches(method, pattern):
            return rule.access
    return Access.READ if method in READS else Access.ADMIN


@dataclass(slots=True)
class AuthState:
    authenticator: JwtAuthenticator
    failures: SignInFailures = field(default_factory=SignInFailures)


AUTH_KEY = web.AppKey("auth", AuthState)


def _challenge(error: Unauthorized, request: web.Request) -> web.Response:
    request.app[OPERATIONS_KEY].stats.errors += 1
    response = error_response(error)
    detail = ', error="invalid_token"' if error.code == "invalid_token" else ""
    response.headers["WWW-Authenticate"] = f'Bearer realm="maxine"{detail}'
    return response


def bearer_token(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.", code="invalid_token")
    return token.strip()


def auth_middleware(authenticator: JwtAuthenticator) -> Middleware:
    decisions: dict[tuple[str, str | None], Access] = {}

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        key = (request.method, resource.canonical if resource is not None else None)
        access = decisions.get(key)
        if access is None:
            if len(decisions) >= MAX_CACHED_DECISIONS:
                decisions.clear()
            access = decisions[key] = required_access(*key)
        if access is Access.PUBLIC or (access is Access.PAGE and not request.query_string):
            return await handler(request)

        header = request.headers.get("Authorization")
        if header is None:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await handler(request)  # the WebSocket's first message authenticates
            return _challenge(
                Unauthorized("This route needs a token: sign in at POST /signin.", code="missing_token"), request
            )
        try:
            identity = authenticator.verify(bearer_token(header))
        except Unauthorized as error:
            return _challenge(error, request)

        request[IDENTITY_KEY] = identity
        needed = Access.READ if access is Access.PAGE else access
        if not identity.roles & ALLOWED_ROLES[needed]:
            raise Forbidden(
                f"{request.method} {key[1]} is for the roles {', '.join(sorted(ALLOWED_ROLES[needed]))}; "
                f"the token of {identity.subject!r} has {', '.join(sorted(identity.roles))}.",
                code="forbidden",
            )
        return await handler(request)

    return authenticate


# Handlers.


def _auth_state(request: web.Request) -> AuthState:
    state = request.app.get(AUTH_KEY)
    if state is None:
        raise NotFound("Authentication is off (AUTH_ENABLED); no token is needed.", code="auth_disabled")
    return state


def _string(document: object, name: str) -> str:
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"The body must be a JSON object with a non-empty string {name}.")
    return value


def _token_answer(authenticator: JwtAuthenticator, token: str, identity: Identity) -> web.Response:
    expires_at = authenticator.expires_at(token)
    return respond(
        ok(
            {
                "token": token,
                "subject": identity.subject,
                "roles": sorted(identity.roles),
                "expiresAt": expires_at,
            }
        )
    )


async def sign_in(request: web.Request) -> web.Response:
    state = _auth_state(request)
    body = await read_json(request)
    username = _string(body, "username")
    password = _string(body, "password")

    authenticator = state.authenticator
    try:
        identity = await authenticator.sign_in(username, password)
    except Unauthorized:
        operations = request.app[OPERATIONS_KEY]
        address = operations.client_address(request.remote, request.headers.get("X-Forwarded-For")) or "unknown"
        failures = state.failures.record(address)
        # A name nobody has may be a password typed in the wrong field: only known names are kept.
        known = authenticator.is_known_user(username)
        request[AUDIT_DETAIL_KEY] = {
            "event": "signin_failed",
            "username": username if known else None,
            "failuresFromAddress": failures,
            "failureWindowSeconds": state.failures.window,
        }
        if failures in (5, 20) or failures % 100 == 0:
            logger.warning("Sign-in failed %d times from %s in the last %gs.", failures, address, state.failures.window)
        raise

    request[AUDIT_DETAIL_KEY] = {"event": "signin", "username": identity.subject}
    return _token_answer(authenticator, authenticator.issue(identity), identity)


async def refresh_token(request: web.Request) -> web.Response:
    state = _auth_state(request)
    body = await read_json(request)
    if isinstance(body, dict) and "token" in body:
        token = _string(body, "token")
    elif "Authorization" in request.headers:
        token = bearer_token(request.headers["Authorization"])
    else:
        raise InvalidInput("The body must be a JSON object with the token to refresh.")

    authenticator = state.authenticator
    try:
        identity = authenticator.verify(token)
        fresh = authenticator.refresh(token)
    except Unauthorized:
        request[AUDIT_DETAIL_KEY] = {"event": "token_refresh_failed"}
        raise
    request[AUDIT_DETAIL_KEY] = {"event": "token_refreshed", "username": identity.subject}
    return _token_answer(authenticator, fresh, identity)


def _lifetime(value: object, *, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            seconds = parse_duration(value, name="expiresIn")
        except SettingsError as exc:
            raise InvalidInput(str(exc)) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value)
    else:
        raise InvalidInput(f"expiresIn must be seconds or a duration like '30d', got {value!r}.")
    if not MIN_TOKEN_LIFETIME <= seconds <= MAX_TOKEN_LIFETIME:
        raise InvalidInput(f"expiresIn must be from {MIN_TOKEN_LIFETIME:g} to {MAX_TOKEN_LIFETIME:g} seconds.")
    return seconds


async def mint_token(request: web.Request) -> web.Response:
    """An admin issues a token for a workload (role ``service``) or a reader (``read-only``)."""
    state = _auth_state(request)
    body = await read_json(request)
    subject = _string(body, "subject")
    if len(subject) > TOKEN_SUBJECT_MAX_LENGTH or not subject.isprintable():
        raise InvalidInput(f"subject must be 1 to {TOKEN_SUBJECT_MAX_LENGTH} printable characters.")
    assert isinstance(body, dict)
    role = body.get("role", SERVICE)
    if role not in (SERVICE, READ_ONLY):
        raise InvalidInput(f"role must be {SERVICE!r} or {READ_ONLY!r}, got {role!r}; admins sign in.")

    authenticator = state.authenticator
    lifetime = _lifetime(body.get("expiresIn"), default=authenticator.lifetime)
    identity = Identity(subject=subject, roles=frozenset({role}), verified=True)
    token = authenticator.issue(identity, lifetime=lifetime)
    request[AUDIT_DETAIL_KEY] = {"event": "token_issued", "subject": subject, "grantedRoles": [role]}
    return _token_answer(authenticator, token, identity)


def setup(app: web.Application, operations: Operations) -> None:
    app.router.add_route("POST", "/signin", sign_in)
    app.router.add_route("POST", "/refresh-token", refresh_token)
    app.router.add_route("POST", "/tokens", mint_token)
    settings = operations.settings
    if not settings.auth_enabled:
        return

    authenticator = JwtAuthenticator.from_settings(settings)
    operations.authenticator = authenticator
    app[AUTH_KEY] = AuthState(authenticator=authenticator)
    app.middlewares.append(auth_middleware(authenticator))
    logger.info(
        "Authentication is on: tokens live %gs.",
        authenticator.lifetime,
        extra={"users": [user.username for user in authenticator.users]},
    )
