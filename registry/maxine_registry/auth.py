"""
JSON Web Tokens for Maxine: who signed in, with which role, and until when.

A person signs in with a user name and password; the password is checked against a bcrypt hash
from the settings and the answer is a token signed with HS256 and the server's secret. Every
later request carries the token, and ``verify`` turns it back into an ``Identity`` without any
lookup, so checking a token costs one HMAC and no I/O.

Roles:
- ``admin`` may do everything;
- ``read-only`` may read the registry (discover, list, metrics) and change nothing;
- ``service`` is for workloads: it may read like ``read-only`` and also register, heartbeat,
  deregister and report response times. Nobody signs in as a service: an admin mints such tokens
  (``issue`` with a lifetime of its own) and hands them to the workloads.

Verification accepts HS256 only. A token that names another algorithm (``none`` included) is
refused before its signature is looked at, and so is one that is too large, expired, issued by
someone else, or that claims a role Maxine does not know. Expiry is checked on the injectable
wall clock, not by the JWT library, so tests can move time.

Password checks run bcrypt in a worker thread (it takes a good fraction of a second by design)
with a small cap on how many run at once, so sign-in attempts can neither stall the event loop
nor take every core. An unknown user name costs the same bcrypt work as a known one, against a
hash made at start-up with the same cost, so the answer time does not tell which names exist.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from maxine_registry.errors import Unauthorized
from maxine_registry.identity import ADMIN, READ_ONLY, Identity
from maxine_registry.settings import MIN_JWT_SECRET_BYTES, Settings, SettingsError, parse_duration

logger = logging.getLogger(__name__)

SERVICE = "service"
KNOWN_ROLES = frozenset({ADMIN, READ_ONLY, SERVICE})

ALGORITHM = "HS256"
ISSUER = "maxine"
# Tokens are a few hundred bytes; anything much larger is not one of ours and is refused unread.
MAX_TOKEN_BYTES = 8 * 1024
# bcrypt reads at most 72 bytes of a password; longer ones are refused rather than cut silently.
MAX_PASSWORD_BYTES = 72
MAX_USERNAME_LENGTH = 256
# Lifetime limits for tokens an admin mints for workloads (POST /tokens).
MAX_TOKEN_LIFETIME = 365 * 86400.0
MIN_TOKEN_LIFETIME = 1.0
# bcrypt checks running at once; more sign-in attempts wait their turn.
MAX_CONCURRENT_PASSWORD_CHECKS = 2
# Failed sign-ins are counted per client address over this window, for the audit log.
SIGN_IN_FAILURE_WINDOW = 300.0
MAX_TRACKED_ADDRESSES = 10_000
MAX_FAILURES_COUNTED = 10_000

INVALID_CREDENTIALS = "Wrong user name or password."


def _invalid_token(message: str) -> Unauthorized:
    return Unauthorized(message, code="invalid_token")


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: bytes
    role: str

    def __repr__(self) -> str:
        return f"User(username={self.username!r}, role={self.role!r})"


class JwtAuthenticator:
    """Signs and verifies tokens, and checks passwords; implements ``auth_protocol.Authenticator``."""

    def __init__(
        self,
        *,
        secret: str,
        lifetime: float,
        users: Sequence[User],
        wall: Callable[[], float] = time.time,  # injectable for tests that move time
    ) -> None:
        import bcrypt  # noqa: PLC0415 - loaded only when auth is on

        # Settings refuse a short key at start; this guards code that builds an authenticator itself.
        if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise SettingsError(f"The JWT signing key must be at least {MIN_JWT_SECRET_BYTES} bytes.")
        self._key = secret.encode()
        self.lifetime = lifetime
        self.users = tuple(users)
        self._wall = wall
        self._checks: asyncio.Semaphore | None = None

        # Unknown names are checked against this, at the cost of the real hashes, to take as long.
        cost = max((_bcrypt_cost(user.password_hash) for user in self.users), default=12)
        self._decoy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))

    def __repr__(self) -> str:
        return f"JwtAuthenticator(users={list(self.users)!r}, lifetime={self.lifetime:g})"

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtAuthenticator:
        users = [User(settings.admin_username, settings.admin_password_hash.encode(), ADMIN)]
        if settings.readonly_password_hash:
            users.append(User(settings.readonly_username, settings.readonly_password_hash.encode(), READ_ONLY))
        lifetime = parse_duration(settings.jwt_expires_in, name="JWT_EXPIRES_IN")
        return cls(secret=settings.jwt_secret, lifetime=lifetime, users=users)

    # Tokens.

    def issue(self, identity: Identity, *, lifetime: float | None = None) -> str:
        """A signed token for ``identity``, valid for ``lifetime`` seconds (the configured one by default)."""
        import jwt  # noqa: PLC0415 - loaded only when auth is on

        now = int(self._wall())
        claims = {
            "sub": identity.subject,
            "roles": sorted(identity.roles),
            "iat": now,
            "exp": now + max(int(lifetime if lifetime is not None else self.lifetime), 1),
            "iss": ISSUER,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> Identity:
        """The identity a token proves; ``Unauthorized`` (code ``invalid_token``) for anything else."""
        claims = self._claims(token)
        return Identity(subject=claims["sub"], roles=frozenset(claims["roles"]), verified=True)

    def refresh(self, token: str) -> str:
        """A new token for the same subject and roles, as long-lived as the old one; only for a valid token."""
        claims = self._claims(token)
        identity = Identity(subject=claims["sub"], roles=frozenset(claims["roles"]), verified=True)
        lifetime = min(max(claims["exp"] - claims["iat"], MIN_TOKEN_LIFETIME), MAX_TOKEN_LIFETIME)
        return self.issue(identity, lifetime=lifetime)

    def expires_at(self, token: str) -> int:
        """When a token (one this authenticator just issued or verified) ends, in seconds since the epoch."""
        exp: int = self._claims(token)["exp"]
        return exp

    def _claims(self, token: str) -> dict[str, Any]:
        import jwt  # noqa: PLC0415 - loaded only when auth is on

        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise _invalid_token("The token is missing, not a string, or too large to be a Maxine token.")

        # Decide on the algorithm before any key is used: HS256 or nothing, 'none' above all.
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid_token("The token is not a well-formed JWT.") from None
        if header.get("alg") != ALGORITHM:
            raise _invalid_token(f"The token is signed with {header.get('alg')!r}; only {ALGORITHM} is accepted.")

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                # Expiry is checked below on our own clock; the library's would be the real time.
                options={"require": ["sub", "iat", "exp", "iss"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise _invalid_token(
                "The token's signature does not match; it was forged or signed with another key."
            ) from None
        except jwt.PyJWTError as exc:
            raise _invalid_token(f"The token is not valid: {exc}.") from None

        exp, iat, roles = claims.get("exp"), claims.get("iat"), claims.get("roles")
        if not isinstance(exp, int) or not isinstance(iat, int) or not isinstance(claims["sub"], str):
            raise _invalid_token("The token's sub, iat or exp claim has the wrong type.")
        if exp <= self._wall():
            raise _invalid_token("The token has expired; sign in again, or refresh tokens before they expire.")
        if not isinstance(roles, list) or not roles or not all(role in KNOWN_ROLES for role in roles):
            raise _invalid_token(f"The token's roles must be a non-empty list of {sorted(KNOWN_ROLES)}.")
        return claims

    # Passwords.

    async def sign_in(self, username: str, password: str) -> Identity:
        """The identity of a user whose password matches; ``Unauthorized`` otherwise, in about the same time."""
        user = self._find_user(username)
        candidate = password.encode()
        # A password bcrypt cannot take is checked as a wrong one against the decoy, to cost the same.
        usable = user is not None and len(candidate) <= MAX_PASSWORD_BYTES
        hashed = user.password_hash if user is not None and usable else self._decoy_hash
        checked = candidate[:MAX_PASSWORD_BYTES] if usable else b"-"

        if self._checks is None:
            self._checks = asyncio.Semaphore(MAX_CONCURRENT_PASSWORD_CHECKS)
        async with self._checks:
            matches = await asyncio.to_thread(_check_password, checked, hashed)
        if user is None or not usable or not matches:
            raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
        return Identity(subject=user.username, roles=frozenset({user.role}), verified=True)

    def is_known_user(self, username: str) -> bool:
        return self._find_user(username) is not None

    def _find_user(self, username: str) -> User | None:
        """The user with this name, comparing against every user in constant time."""
        wanted = username.encode()[:MAX_USERNAME_LENGTH]
        found: User | None = None
        for user in self.users:
            if hmac.compare_digest(wanted, user.username.encode()):
                found = user
        return found


def _bcrypt_cost(password_hash: bytes) -> int:
    try:
        return int(password_hash.split(b"$")[2])
    except (IndexError, ValueError):
        return 12


def _check_password(password: bytes, password_hash: bytes) -> bool:
    import bcrypt  # noqa: PLC0415 - loaded only when auth is on

    try:
        return bcrypt.checkpw(password, password_hash)
    except ValueError:  # a malformed hash is a failed check, never a crash
        return False


class SignInFailures:
    """
    Failed sign-ins per client address over a sliding window, for the audit log's security events.

    It only counts; it refuses nothing. At most ``max_addresses`` addresses are tracked: when more
    fail at once, the oldest entries are forgotten first, so a flood of addresses cannot grow memory.
    """

    def __init__(
        self,
        *,
        window: float = SIGN_IN_FAILURE_WINDOW,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.max_addresses = max_addresses
        self._wall = wall
        self._failures: dict[str, deque[float]] = {}
        self.total = 0

    def __repr__(self) -> str:
        return f"SignInFailures(addresses={len(self._failures)}, total={self.total})"

    def record(self, address: str) -> int:
        """Count one failure from ``address``; return how many it had within the window, this one included."""
        now = self._wall()
        self.total += 1
        times = self._failures.pop(address, None)
        if times is None:
            times = deque(maxlen=MAX_FAILURES_COUNTED)
            while len(self._failures) >= self.max_addresses:
                del self._failures[next(iter(self._failures))]
        while times and times[0] <= now - self.window:
            times.popleft()
        times.append(now)
        # Re-inserting keeps the dict in order of last failure, so the oldest is first to go.
        self._failures[address] = times
        return len(times)
