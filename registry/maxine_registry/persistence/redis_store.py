"""
The Redis store: the registry's state lives in Redis, and every replica keeps a current copy in memory.

Several Maxine processes (replicas) share one Redis. Each serves reads from its own memory, as
without Redis; a write changes the local state, is written to Redis, and is answered only once
Redis has it. The other replicas learn of it from a Redis Stream of changes and apply it to their
memory, usually within a millisecond or two.

Keys (all share the hash tag ``{maxine}``, one hash slot, as Redis Cluster would need for the scripts):

- ``{maxine}:state:<kind>``: a hash per kind (``node``, ``traffic``, ``configs``, ``governance``,
  ``dependencies``, ...; see ``state``), entry key to the entry's JSON.
- ``{maxine}:leases``: a sorted set, node id to the time its lease ends (ms, Redis's clock).
- ``{maxine}:changes``: the stream of changes; each entry has a ``seq`` from ``{maxine}:seq``,
  the writing replica (``origin``), and the change (``kind``, ``key``, ``value``, ``whole``,
  ``expired``). It is trimmed to about ``STREAM_MAX_LENGTH`` entries.
- ``{maxine}:epoch``: a random id, set when the shared state was (re)created.
- ``{maxine}:leader``: the lease-keeper lock.

Writes are one Lua script per flush: it checks the epoch, updates the hashes (and the lease of
a registered node), and appends each change with the next ``seq``, atomically. Replicas read
the stream with a blocking ``XREAD`` and expect ``seq`` to grow by one: a gap (they fell behind
further than the stream keeps, or missed a reconnect) sends them to *resynchronise*: read every
hash, the ``seq`` and the stream's last id in one ``MULTI``, make their memory equal to it, and
follow the stream from there. Every reconnection resynchronises too, so a replica that lost Redis
for a while needs no restart. When Redis comes back without the epoch (it restarted without
persistence, or is new), the first replica to notice writes its own memory back into it (a
``WATCH``-guarded transaction, so only one does) and the others resynchronise from that.

Conflicts: changes are state per key, applied in stream order, so the last write to a key wins on
every replica. A replica skips stream entries that its own later write (written, or still marked)
is about to overwrite, so it never shows an older value for a moment after answering a newer one.

Leases are decided once for all replicas. A heartbeat renews the local lease at once and the Redis
one within ``RENEW_INTERVAL`` (batched: ``ZADD`` with Redis's time plus the ttl). One replica holds
the ``leader`` lock (``SET NX PX``, renewed every ``LEADER_INTERVAL``); it ends the due leases in
Redis and appends an ``expired`` change for each, which every replica applies (publishing
``service_unhealthy``). Replicas do not end leases themselves (``Registry.expires_leases``). When
the leader dies, its lock runs out after ``LEADER_LOCK_MS`` and another replica takes over.

Redis down: writes answer 503 ``persistence_unavailable`` (a registration is refused before it
changes anything; any other write is undone by the resynchronisation that follows), reads go on
from memory, heartbeats are answered from memory and their renewals wait for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError, WatchError

from maxine_registry.model import Instance
from maxine_registry.persistence.state import NODE, Change, ChangeTracker, Dirty, StateModel
from maxine_registry.persistence.store import PersistenceStartError, PersistenceUnavailable, Store
from maxine_registry.registration import Registration
from maxine_registry.settings import Settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "{maxine}:"
STREAM_MAX_LENGTH = 100_000
# How long the leader's lock lives without renewal: how long leases stay unended after a leader dies.
LEADER_LOCK_MS = 2000
LEADER_INTERVAL = 0.25
RENEW_INTERVAL = 0.1
EXPIRE_BATCH = 500
READ_BATCH = 1000
READ_BLOCK_MS = 1000
RECONNECT_MIN_DELAY = 0.05
RECONNECT_MAX_DELAY = 1.0
STARTUP_TIMEOUT = 15.0
SOCKET_TIMEOUT = 3.0
CONNECT_TIMEOUT = 1.0
EPOCH_ERROR = "MAXINE_EPOCH"

# KEYS: epoch, seq, changes, leases, then one state hash per change.
# ARGV: epoch, origin, stream length, then per change: kind, key, value, ttl_ms, whole, n, and n (key, value, ttl_ms).
WRITE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('MAXINE_EPOCH the shared state was replaced; this replica resynchronises')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seqs = {}
local i = 4
local change = 0
while i <= #ARGV do
  change = change + 1
  local kind, key, value, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local whole, n = ARGV[i + 4], tonumber(ARGV[i + 5])
  local hash = KEYS[4 + change]
  i = i + 6
  if whole == '1' then
    redis.call('DEL', hash)
    if kind == 'node' then redis.call('DEL', KEYS[4]) end
    for j = 0, n - 1 do
      local k, v, kttl = ARGV[i + j * 3], ARGV[i + j * 3 + 1], ARGV[i + j * 3 + 2]
      redis.call('HSET', hash, k, v)
      if kind == 'node' then redis.call('ZADD', KEYS[4], now + tonumber(kttl), k) end
    end
    i = i + n * 3
  elseif value == '' then
    redis.call('HDEL', hash, key)
    if kind == 'node' then redis.call('ZREM', KEYS[4], key) end
  else
    redis.call('HSET', hash, key, value)
    if kind == 'node' then redis.call('ZADD', KEYS[4], now + tonumber(ttl), key) end
  end
  local seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'origin', ARGV[2],
    'kind', kind, 'key', key, 'value', value, 'whole', whole, 'expired', '0')
  seqs[#seqs + 1] = seq
end
return seqs
"""

# KEYS: epoch, leases, node hash. ARGV: epoch, then (node id, ttl_ms) pairs. Answers the node ids Redis does not hold.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('MAXINE_EPOCH the shared state was replaced; this replica resynchronises')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local missing = {}
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[i + 1]), ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
return missing
"""

# KEYS: epoch, leases, node hash, seq, changes, leader. ARGV: epoch, leader id, stream length, batch.
# Answers how many leases it ended, or -1 when the caller no longer holds the lock.
EXPIRE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('MAXINE_EPOCH the shared state was replaced; this replica resynchronises')
end
if redis.call('GET', KEYS[6]) ~= ARGV[2] then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, node in ipairs(due) do
  redis.call('ZREM', KEYS[2], node)
  redis.call('HDEL', KEYS[3], node)
  local seq = redis.call('INCR', KEYS[4])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'origin', ARGV[2],
    'kind', 'node', 'key', node, 'value', '', 'whole', '0', 'expired', '1')
end
return #due
"""

# KEYS: leader. ARGV: id, ms. Renews the lock only for its holder.
RENEW_LOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""

RELEASE_LOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# What XREAD answers: per stream, its name and its entries (id, fields).
StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def key(name: str) -> str:
    return KEY_PREFIX + name


def state_key(kind: str) -> str:
    return key("state:" + kind)


EPOCH_KEY = key("epoch")
SEQ_KEY = key("seq")
CHANGES_KEY = key("changes")
LEASES_KEY = key("leases")
LEADER_KEY = key("leader")


def redis_address(settings: Settings) -> str:
    """Where Redis is, for logs: host and port only, never credentials."""
    if settings.redis_url:
        parts = urllib.parse.urlsplit(settings.redis_url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        return f"{parts.hostname}:{parts.port or 6379}"
    return f"{settings.redis_host}:{settings.redis_port}"


def connect(settings: Settings) -> aioredis.Redis:
    """A client for the settings' Redis; it does not retry by itself (the store decides when to try again)."""
    # TODO: LATER: one Redis address only. Sentinel (redis.asyncio.sentinel) needs settings for the sentinels
    # and the master's name; Cluster needs the cluster client (the keys already share one hash slot).
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        "client_name": "maxine",
    }
    if settings.redis_url:
        if settings.redis_password:
            options["password"] = settings.redis_password
        return aioredis.Redis.from_url(settings.redis_url, **options)
    return aioredis.Redis(
        host=settings.redis_host, port=settings.redis_port, password=settings.redis_password or None, **options
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ttl_ms(value: Any) -> int:
    ttl = value.get("ttl") if isinstance(value, dict) else None
    return int(float(ttl) * 1000) if isinstance(ttl, (int, float)) else 30_000


class RedisStore(Store):
    kind = "redis"

    def __init__(self, *, settings: Settings, model: StateModel, tracker: ChangeTracker) -> None:
        super().__init__(model=model, tracker=tracker, flush_interval=0.0)
        self.address = redis_address(settings)
        self.replica_id = uuid.uuid4().hex[:16]
        self.redis = connect(settings)
        self.available = False
        self.is_leader = False
        self.epoch: str | None = None
        self.applied_seq = 0
        self.resyncs = 0
        self.leases_ended = 0
        self._last_id: bytes | str = "0-0"
        self._need_resync = True
        # The seq of this replica's newest write to each (kind, key); None as key: the whole kind.
        self._own: dict[tuple[str, str | None], int] = {}
        self._renewals: dict[str, int] = {}
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._write = self.redis.register_script(WRITE_SCRIPT)
        self._renew = self.redis.register_script(RENEW_SCRIPT)
        self._expire = self.redis.register_script(EXPIRE_SCRIPT)
        self._renew_lock = self.redis.register_script(RENEW_LOCK_SCRIPT)
        self._release_lock = self.redis.register_script(RELEASE_LOCK_SCRIPT)
        self._outage_logged = False

    def __repr__(self) -> str:
        return (
            f"RedisStore(address={self.address!r}, replica={self.replica_id!r}, available={self.available}, "
            f"leader={self.is_leader}, applied_seq={self.applied_seq})"
        )

    # Lifecycle.

    async def start(self) -> None:
        """Synchronise with Redis (waiting up to ``STARTUP_TIMEOUT`` for it), then follow, lead and flush."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        delay = RECONNECT_MIN_DELAY
        while True:
            try:
                await self.resync()
                break
            except (RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    await self.redis.aclose()
                    raise PersistenceStartError(
                        f"Redis at {self.address} did not answer within {STARTUP_TIMEOUT:g} s: {exc}."
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
        self.start_flushing()
        self._tasks = [
            asyncio.create_task(self._follow_forever(), name="maxine-redis-follower"),
            asyncio.create_task(self._lead_forever(), name="maxine-redis-leader"),
            asyncio.create_task(self._renew_forever(), name="maxine-redis-renewals"),
        ]
        logger.info(
            "Sharing state through Redis at %s as replica %s.",
            self.address,
            self.replica_id,
            extra={"nodes": self.model.registry.node_count, "seq": self.applied_seq},
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.stop_flushing()
        with contextlib.suppress(RedisError, OSError):
            await self._send_renewals()
        if self.is_leader:
            # Hand the lease keeping over at once rather than after the lock runs out.
            with contextlib.suppress(RedisError, OSError):
                await self._release_lock(keys=[LEADER_KEY], args=[self.replica_id])
            self.is_leader = False
        await self.redis.aclose()

    # Writers.

    def check_writable(self) -> None:
        if not self.available:
            raise PersistenceUnavailable(
                f"Redis at {self.address} is unreachable or this replica is resynchronising with it; "
                "the write was not made. Reads are served from memory meanwhile."
            )

    def guard_registration(self, registration: Registration) -> None:
        """Refuse a registration before it changes anything while Redis cannot take it; otherwise mark it."""
        self.check_writable()
        self.tracker.note_registration(registration)

    def note_heartbeat(self, instance: Instance) -> None:
        self._renewals[instance.node_id] = int(instance.ttl * 1000)

    async def write(self, changes: list[Change]) -> None:
        async with self._write_lock:
            self.check_writable()
            keys = [EPOCH_KEY, SEQ_KEY, CHANGES_KEY, LEASES_KEY]
            args: list[Any] = [self.epoch, self.replica_id, STREAM_MAX_LENGTH]
            for change in changes:
                keys.append(state_key(change.kind))
                if change.key is None:
                    entries: dict[str, Any] = change.value
                    args += [change.kind, "", orjson.dumps(entries), 0, "1", len(entries)]
                    for entry_key, value in entries.items():
                        args += [entry_key, orjson.dumps(value), _ttl_ms(value)]
                else:
                    encoded = b"" if change.value is None else orjson.dumps(change.value)
                    args += [change.kind, change.key, encoded, _ttl_ms(change.value), "0", 0]
            try:
                seqs = await cast(Awaitable[list[int]], self._write(keys=keys, args=args))
            except ResponseError as exc:
                if EPOCH_ERROR in str(exc):
                    self._need_resync = True
                    self.available = False
                    raise PersistenceUnavailable(
                        "The state in Redis was replaced; this replica resynchronises."
                    ) from None
                raise
            for change, seq in zip(changes, seqs, strict=True):
                self._own[(change.kind, change.key)] = int(seq)

    def write_failed(self, dirty: Dirty, error: BaseException) -> None:
        # Not given back: the local change stays unacknowledged, and the resynchronisation puts Redis's state back.
        if isinstance(error, (RedisError, OSError)):
            self._lost(error)
        self._need_resync = True

    def is_store_error(self, error: BaseException) -> bool:
        return isinstance(error, RedisError)

    # Following the stream.

    async def _follow_forever(self) -> None:
        delay = RECONNECT_MIN_DELAY
        while True:
            try:
                if self._need_resync:
                    await self.resync()
                await self._read_changes()
                delay = RECONNECT_MIN_DELAY
            except (RedisError, OSError) as exc:
                self._lost(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def _lost(self, error: BaseException) -> None:
        self.available = False
        self._need_resync = True
        self.last_error = str(error) or type(error).__name__
        if not self._outage_logged:
            self._outage_logged = True
            logger.error(
                "Lost Redis at %s (%s); writes answer 503 and reads are served from memory until it is back.",
                self.address,
                self.last_error,
            )

    async def _read_changes(self) -> None:
        response = cast(
            StreamReply,
            await self.redis.xread({CHANGES_KEY: self._last_id}, count=READ_BATCH, block=READ_BLOCK_MS),
        )
        if not response:
            return
        entries = response[0][1]

        # This replica's own writes in flight must have their seq known before the stream is applied.
        while self._inflight is not None:
            await asyncio.wait([self._inflight])

        changes: list[Change] = []
        for entry_id, fields in entries:
            seq = int(fields[b"seq"])
            if fields[b"kind"] == b"resync":
                # Another replica wrote the state anew (Redis had lost it): its numbering starts over.
                self._need_resync = True
                break
            if seq <= self.applied_seq:
                continue
            if seq != self.applied_seq + 1:
                logger.warning(
                    "Missed changes in Redis (expected %d, got %d); resynchronising.", self.applied_seq + 1, seq
                )
                self._need_resync = True
                break
            self._last_id = entry_id
            self.applied_seq = seq
            change = self._decode(_text(fields[b"kind"]), fields)
            if change is not None:
                change = self._unless_superseded(change, seq=seq, origin=_text(fields[b"origin"]))
            if change is not None:
                changes.append(change)
        if changes:
            self.model.apply(changes)

    def _decode(self, kind: str, fields: dict[bytes, bytes]) -> Change | None:
        raw = fields[b"value"]
        whole = fields.get(b"whole") == b"1"
        try:
            value = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            logger.error("A change in Redis for %s does not parse; it was skipped.", kind)
            return None
        return Change(
            kind=kind,
            key=None if whole else _text(fields[b"key"]),
            value=value if not whole else (value or {}),
            expired=fields.get(b"expired") == b"1",
        )

    def _unless_superseded(self, change: Change, *, seq: int, origin: str) -> Change | None:
        """
        The change to apply, or None to skip it: it is this replica's own (applied here already), or a
        newer write of this replica to the same key is coming (written, or still marked).
        """
        own = self._own.get((change.kind, change.key))
        if origin == self.replica_id and own == seq:
            del self._own[(change.kind, change.key)]
            return None
        if own is not None and own > seq:
            return None
        own_whole = self._own.get((change.kind, None))
        if own_whole is not None and own_whole > seq:
            return None
        marked = self.tracker.dirty.get(change.kind, set())
        if marked is None:
            return None
        if change.key is not None:
            return None if change.key in marked else change

        # A whole kind from another replica: keep the keys this replica is about to write.
        protected = set(marked)
        for (own_kind, own_key), own_seq in self._own.items():
            if own_kind == change.kind and own_key is not None and own_seq > seq:
                protected.add(own_key)
        if not protected:
            return change
        value = dict(change.value)
        for kept in self.model.read({change.kind: protected}):
            if kept.value is None:
                value.pop(str(kept.key), None)
            else:
                # Through JSON once: a live value may hold orjson fragments, an applied one must be plain data.
                value[str(kept.key)] = orjson.loads(orjson.dumps(kept.value))
        return Change(kind=change.kind, key=None, value=value)

    async def resync(self) -> None:
        """Make the local state equal Redis's (writing ours into an empty Redis first), then follow from there."""
        self.available = False
        async with self._write_lock:
            while True:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.get(EPOCH_KEY)
                    pipe.get(SEQ_KEY)
                    pipe.xrevrange(CHANGES_KEY, count=1)
                    for kind in self.model.kinds:
                        pipe.hgetall(state_key(kind))
                    results = await pipe.execute()
                if results[0] is None:
                    await self._seed()
                    continue
                break

            state = {
                kind: {_text(name): orjson.loads(raw) for name, raw in entries.items()}
                for kind, entries in zip(self.model.kinds, results[3:], strict=True)
            }
            # From here on nothing awaits: the replacement and the bookkeeping are one step for every other task.
            abandoned = self.abandon_marked("this replica resynchronised with Redis; the write was not made")
            self.model.replace(state)
            self._own.clear()
            self.epoch = _text(results[0])
            self.applied_seq = int(results[1] or 0)
            self._last_id = results[2][0][0] if results[2] else "0-0"
            self._need_resync = False
            self.available = True
            self.resyncs += 1
        if self._outage_logged:
            logger.warning("Redis at %s is back; this replica resynchronised with it.", self.address)
            self._outage_logged = False
        logger.debug(
            "Synchronised with Redis.",
            extra={"nodes": len(state.get(NODE, {})), "seq": self.applied_seq, "abandoned": abandoned},
        )

    async def _seed(self) -> None:
        """Redis holds no state (new, or it lost its data): write this replica's memory into it, unless another did."""
        state = self.model.state()
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        epoch = uuid.uuid4().hex
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.watch(EPOCH_KEY)
                if await pipe.get(EPOCH_KEY) is not None:
                    return
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.delete(CHANGES_KEY, SEQ_KEY, LEASES_KEY, *(state_key(kind) for kind in state))
                for kind, entries in state.items():
                    if entries:
                        pipe.hset(
                            state_key(kind), mapping={name: orjson.dumps(value) for name, value in entries.items()}
                        )
                nodes = state.get(NODE, {})
                if nodes:
                    pipe.zadd(LEASES_KEY, {name: now_ms + _ttl_ms(value) for name, value in nodes.items()})
                pipe.set(SEQ_KEY, 1)
                fields = {"seq": 1, "origin": self.replica_id, "kind": "resync", "key": "", "value": "", "whole": "0"}
                pipe.xadd(CHANGES_KEY, fields, maxlen=STREAM_MAX_LENGTH, approximate=True)  # type: ignore[arg-type]
                pipe.set(EPOCH_KEY, epoch)
                await pipe.execute()
        except WatchError:
            return
        logger.warning(
            "Redis at %s held no Maxine state (it is new, or lost its data); this replica wrote its own into it.",
            self.address,
            extra={"nodes": len(nodes)},
        )

    # Leases.

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_INTERVAL)
            if not self._renewals or not self.available:
                continue
            try:
                await self._send_renewals()
            except (RedisError, OSError) as exc:
                self._lost(exc)

    async def _send_renewals(self) -> None:
        renewals, self._renewals = self._renewals, {}
        if not renewals:
            return
        args: list[Any] = [self.epoch]
        for node_id, ttl_ms in renewals.items():
            args += [node_id, ttl_ms]
        try:
            await cast(Awaitable[Any], self._renew(keys=[EPOCH_KEY, LEASES_KEY, state_key(NODE)], args=args))
        except (RedisError, OSError):
            # Kept for the next try; a newer heartbeat of the same node meanwhile wins.
            self._renewals = renewals | self._renewals
            raise

    async def _lead_forever(self) -> None:
        while True:
            try:
                await self._lead_once()
            except (RedisError, OSError) as exc:
                if self.is_leader:
                    logger.warning("This replica lost the lease keeper's lock: %s", exc)
                self.is_leader = False
            await asyncio.sleep(LEADER_INTERVAL)

    async def _lead_once(self) -> None:
        if self.is_leader:
            held = await cast(
                Awaitable[int], self._renew_lock(keys=[LEADER_KEY], args=[self.replica_id, LEADER_LOCK_MS])
            )
            if not held:
                self.is_leader = False
                logger.warning("Another replica took the lease keeper's lock.")
        elif await self.redis.set(LEADER_KEY, self.replica_id, nx=True, px=LEADER_LOCK_MS):
            self.is_leader = True
            logger.info("This replica (%s) now ends the leases of every replica.", self.replica_id)
        if not self.is_leader or not self.available:
            return

        keys = [EPOCH_KEY, LEASES_KEY, state_key(NODE), SEQ_KEY, CHANGES_KEY, LEADER_KEY]
        args: list[Any] = [self.epoch or "", self.replica_id, STREAM_MAX_LENGTH, EXPIRE_BATCH]
        while True:
            try:
                ended = int(await cast(Awaitable[int], self._expire(keys=keys, args=args)))
            except ResponseError as exc:
                if EPOCH_ERROR in str(exc):
                    self._need_resync = True
                    return
                raise
            if ended < 0:
                self.is_leader = False
                return
            self.leases_ended += ended
            if ended < EXPIRE_BATCH:
                return

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "redis": self.address,
            "replicaId": self.replica_id,
            "available": self.available,
            "leader": self.is_leader,
            "appliedSeq": self.applied_seq,
            "resyncs": self.resyncs,
            "leasesEnded": self.leases_ended,
        }
