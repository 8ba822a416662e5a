"""The Redis Store: rule counters, bans, offence history, the mode and the runtime allowlist
shared by every proxylog on one Redis, without a Redis round trip on the request path.

The request path reads and writes a local view (a MemoryStore) and queues what changed. One
background task batches the queue every `flush_interval` into one pipelined round trip: the
counter events through Lua scripts (each window updated atomically, the global count read
back), bans, unbans, mode and allowlist changes written and published on a channel. A second
task listens on that channel, so another instance's ban applies here as soon as it is
published; a full resync every `resync_interval` is the safety net for a missed message.

What a local count means: this instance's own events (exact, now) plus the other instances'
as of the last round trip that touched the key (at most one flush interval plus one round
trip old on each side). A threshold crossed by traffic spread over several instances is thus
acted on about two flush intervals after the crossing request.

Redis down: requests never wait for it. Counters count locally, bans and operator changes
queue (bounded) and are written back when it returns; a warning, a `state.degraded` record
and the `proxylog_state_degraded` metric say so. If Redis lost its data (a restart without
persistence: the `epoch` key is gone), every instance writes its active bans and its mode and
allowlist back. Keys (all under `key_prefix`, all with a TTL) are listed in docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import orjson
import redis.asyncio as aioredis
from cachetools import LRUCache
from redis.exceptions import NoScriptError, RedisError

from proxylog.config.secrets import read_secret
from proxylog.config.state import StateSpec
from proxylog.state import Ban, CounterSpec, Listener
from proxylog.state.memory import MAX_OFFENDERS, MemoryBanTable, MemoryCounter

logger = logging.getLogger("proxylog")

MAX_QUEUED_OPS = 100_000  # bans and operator changes kept for write-back during an outage
WARM_FOR = 2.0  # seconds a key near its threshold keeps being refreshed after its last event here
MAX_WARM = 512  # warm keys refreshed per round trip at most
BACKOFF = (0.25, 0.5, 1.0, 2.0, 5.0)  # seconds between reconnection attempts

# KEYS[1] a sorted set of event times (member: a unique id, or the distinct value); ARGV:
# now, window, cap, a tag unique to this flush, then the events as JSON [[time, member|null]…].
# Returns the count in the window. (One JSON argument, not two per event: packing arguments is
# what costs proxylog CPU.)
EXACT = """
local now, window, cap, tag = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
for i, event in ipairs(cjson.decode(ARGV[5])) do
  local member = event[2]
  if member == cjson.null then member = tag .. ':' .. i end
  redis.call('ZADD', KEYS[1], event[1], member)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  n = cap
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return n
"""

# KEYS[1] the current fixed bucket, KEYS[2] the previous one (counters, or HyperLogLogs for
# distinct counts); ARGV: window, weight of the previous bucket, the number of events, then
# for a distinct count their members as JSON. Returns the weighted count, like the memory
# store's approx windows.
APPROX = """
local window, weight, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local current, previous
if ARGV[4] then
  for _, member in ipairs(cjson.decode(ARGV[4])) do redis.call('PFADD', KEYS[1], member) end
  current = redis.call('PFCOUNT', KEYS[1])
  previous = redis.call('PFCOUNT', KEYS[1], KEYS[2]) - current
else
  current = redis.call('INCRBY', KEYS[1], count)
  previous = tonumber(redis.call('GET', KEYS[2]) or '0')
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000))
return current + math.floor(previous * weight)
"""

# KEYS[1] the bans hash; ARGV: ban key, ban JSON, ms until it expires. The hash lives as long
# as its longest ban (each entry carries its own `until`; resyncs drop expired ones).
PUT_BAN = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""


class SharedCounter:
    """A rule's counter: the local window, plus what the other instances counted as of the
    last round trip for that key. Events are queued for the next flush."""

    __slots__ = ("local", "name", "others", "own", "pending", "refresh", "spec", "store", "warm")

    def __init__(self, store: RedisStore, name: str, spec: CounterSpec) -> None:
        self.store = store
        self.name = name
        self.spec = spec
        self.local = MemoryCounter(spec)
        self.pending: list[tuple[str, float, str | None]] = []
        self.others: LRUCache[str, tuple[int, float]] = LRUCache(maxsize=spec.max_keys)
        self.warm: dict[str, float] = {}  # keys near their threshold → when last counted here
        self.refresh: list[str] = []
        self.own: dict[str, int] = {}  # key → own count at its last event not yet flushed

    def add(self, key: str, now: float, member: str | None = None) -> int:
        count = self.local.add(key, now, member)
        self.own[key] = count
        if not self.pending:
            self.store.dirty.append(self)
        self.pending.append((key, now, member))
        count += self._others(key, now)
        if 2 * count >= self.spec.cap:
            self.warm[key] = now
        return count

    def peek(self, key: str, now: float) -> int:
        return self.local.peek(key, now) + self._others(key, now)

    def _others(self, key: str, now: float) -> int:
        seen = self.others.get(key)
        if seen is None or now - seen[1] >= self.spec.window:
            return 0
        return seen[0]

    def __len__(self) -> int:
        return len(self.local)


class SharedBanTable:
    """The local ban table; every put and pop is also queued for Redis."""

    def __init__(self, store: RedisStore, local: MemoryBanTable) -> None:
        self.store = store
        self.local = local

    @property
    def refused(self) -> int:
        return self.local.refused

    def get(self, key: str) -> Ban | None:
        return self.local.get(key)

    def put(self, ban: Ban) -> bool:
        if not self.local.put(ban):
            return False
        self.store.queue(("ban", ban.key, ban))
        return True

    def pop(self, key: str) -> Ban | None:
        ban = self.local.pop(key)
        if ban is not None:
            self.store.queue(("unban", key, None))
        return ban

    def expire(self, now: float) -> list[Ban]:
        return self.local.expire(now)  # Redis drops them by their own `until`

    def prefixes(self, version: int) -> tuple[int, ...]:
        return self.local.prefixes(version)

    def all(self) -> list[Ban]:
        return self.local.all()

    def __len__(self) -> int:
        return len(self.local)


Op = tuple[str, str, Any]  # (kind, key or value, payload)


class RedisStore:
    """A Store whose state is shared through Redis; see the module docstring."""

    def __init__(self, spec: StateSpec, clock: Callable[[], float] | None = None) -> None:
        self.spec = spec
        self.clock = clock or time.time
        password = (
            read_secret(
                spec.password_file,
                spec.password_env,
                "state",
                file_key="password_file",
                env_key="password_env",
            )
            if spec.password_file or spec.password_env
            else None
        )
        self._password = password
        self.instance = uuid.uuid4().hex[:12]
        self.prefix = spec.key_prefix
        self.channel = f"{self.prefix}events"
        self.bans = SharedBanTable(self, MemoryBanTable())
        self.listener: Listener | None = None
        self.dirty: list[SharedCounter] = []
        self._counters: dict[str, SharedCounter] = {}
        self._offences: LRUCache[str, tuple[int, float]] = LRUCache(maxsize=MAX_OFFENDERS)
        self._history: LRUCache[str, tuple[int, float]] = LRUCache(maxsize=MAX_OFFENDERS)
        self._ops: deque[Op] = deque(maxlen=MAX_QUEUED_OPS)
        self._mode: str | None = None  # the shared mode as this instance knows it
        self._allow: set[str] = set()  # the shared runtime allowlist as this instance knows it
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._scripts: dict[str, str] = {}  # Lua source → SHA1, once loaded into this Redis
        self._seq = 0
        self._writeback = True  # first contact: make sure Redis has what this instance has
        self._next_resync = -math.inf
        self._failures = 0
        self.degraded = False
        self.last_error: str | None = None
        self.round_trips = 0
        self.commands = 0
        self.events_flushed = 0
        self.events_dropped = 0
        self.outages = 0
        self.last_sync: float | None = None

    # -- the Store protocol (request path: local only) --------------------------------------

    def counter(self, name: str, spec: CounterSpec) -> SharedCounter:
        counter = self._counters.get(name)
        if counter is None or counter.spec != spec:
            counter = self._counters[name] = SharedCounter(self, name, spec)
        return counter

    def retain(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in [n for n in self._counters if n not in keep]:
            del self._counters[name]

    def offend(self, key: str, now: float, memory: float) -> int:
        """This instance's offence count for `key`, raised to follow the bans other instances
        imposed on it (each carries its offence number)."""
        count, last = self._offences.get(key, (0, now))
        count = count + 1 if now - last <= memory else 1
        seen = self._history.get(key)
        if seen is not None and now - seen[1] <= memory:
            count = max(count, seen[0] + 1)
        self._offences[key] = (count, now)
        return count

    def announce(self, kind: str, value: str) -> None:
        if kind == "mode":
            self._mode = value
        elif kind == "allow":
            self._allow.add(value)
        elif kind == "disallow":
            self._allow.discard(value)
        self.queue((kind, value, None))

    def queue(self, op: Op) -> None:
        self._ops.append(op)
        if self._wake is not None:
            self._wake.set()  # bans and operator changes go out now, not at the next tick

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            return
        url = self.spec.url
        assert url is not None
        self._client = aioredis.Redis.from_url(
            url,
            password=self._password,
            username=self.spec.username,
            socket_connect_timeout=self.spec.connect_timeout,
            socket_timeout=max(1.0, 4 * self.spec.connect_timeout),
            retry_on_timeout=False,
        )
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._sync_loop(), name="proxylog state sync"),
            loop.create_task(self._listen_loop(), name="proxylog state events"),
        ]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is None:
            return
        if not self.degraded and (self._ops or self.dirty):
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._sync(resync=False), 2.0)
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
        self._client = None

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "instance": self.instance,
            "degraded": self.degraded,
            "last_error": self.last_error,
            "round_trips": self.round_trips,
            "commands": self.commands,
            "events_flushed": self.events_flushed,
            "events_dropped": self.events_dropped,
            "outages": self.outages,
            "queued": len(self._ops),
            "last_sync_age_s": None if self.last_sync is None else round(self.clock() - self.last_sync, 3),
        }

    # -- the sync task -----------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        assert self._wake is not None
        while True:
            delay = self.spec.flush_interval
            if self.degraded:
                delay = BACKOFF[min(self._failures, len(BACKOFF)) - 1]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            if self.degraded and self._wake.is_set():
                await asyncio.sleep(max(0.0, delay - self.spec.flush_interval))  # no busy retries
            self._wake.clear()
            try:
                await self._sync(resync=self.degraded or self.clock() >= self._next_resync)
            except (RedisError, OSError, TimeoutError) as e:
                self._degrade(e)
            except Exception:
                logger.exception("state sync failed unexpectedly")
                self._degrade(RuntimeError("internal error"))

    async def _sync(self, *, resync: bool) -> None:
        """One round trip: queued ops and counter events out, global counts (and, on a
        resync, every ban, the mode and the allowlist) back."""
        assert self._client is not None
        now = self.clock()
        queued = list(self._ops)
        self._ops.clear()
        ops = self._everything(now) + queued if self._writeback else queued
        dirty, self.dirty = self.dirty, []
        batches = [(counter, counter.pending) for counter in dirty]
        for counter in dirty:
            counter.pending = []
        try:
            if not self._scripts:  # first contact, or Redis restarted and forgot them
                for source in (EXACT, APPROX, PUT_BAN):
                    self._scripts[source] = await self._client.script_load(source)
            pipe = self._client.pipeline(transaction=False)
            self._write_ops(pipe, ops, now)
            offset = len(pipe)
            reads = self._write_counters(pipe, batches, now)
            if resync:
                ttl = int(self.spec.ttl * 1000)
                pipe.set(f"{self.prefix}epoch", self.instance, nx=True, px=ttl)
                pipe.pexpire(f"{self.prefix}epoch", ttl)
                pipe.hgetall(f"{self.prefix}bans")
                pipe.get(f"{self.prefix}mode")
                pipe.smembers(f"{self.prefix}allow")
            commands = len(pipe)
            results = await pipe.execute()
        except BaseException as e:
            if isinstance(e, NoScriptError):
                self._scripts = {}
            # Counts stay local while Redis is away; bans and operator changes wait for it.
            self.events_dropped += sum(len(events) for _, events in batches)
            self._ops.extendleft(reversed(queued))
            raise
        self.round_trips += 1
        self.commands += commands
        self.events_flushed += sum(len(events) for _, events in batches)
        self.last_sync = now
        self._writeback = False
        for (counter, key, own), count in zip(reads, results[offset : offset + len(reads)], strict=True):
            counter.others[key] = (max(0, int(count) - own), now)
            if 2 * int(count) >= counter.spec.cap and key not in counter.warm:
                counter.warm[key] = now
        if resync:
            fresh, _, bans, mode, allow = results[-5:]
            if fresh:  # Redis had no epoch: it is new or lost its data; write everything back
                self._writeback = True
                logger.warning("state: Redis has no proxylog state (new or restarted): writing it back")
                if self._wake is not None:
                    self._wake.set()
            else:
                self._next_resync = now + self.spec.resync_interval
                self._resync(bans, mode, allow, now)
        self._recovered()

    def _everything(self, now: float) -> list[Op]:
        """This instance's share of the state, to write back to a Redis that lost it."""
        ops: list[Op] = [("ban", ban.key, ban) for ban in self.bans.all() if ban.until > now]
        if self._mode is not None:
            ops.append(("mode", self._mode, None))
        ops += [("allow", cidr, None) for cidr in sorted(self._allow)]
        return ops

    def _write_ops(self, pipe: Any, ops: list[Op], now: float) -> None:
        bans, ttl = f"{self.prefix}bans", int(self.spec.ttl * 1000)
        for kind, value, ban in ops:
            if kind == "ban":
                ms = max(1, int((ban.until - now) * 1000))
                pipe.evalsha(self._scripts[PUT_BAN], 1, bans, value, orjson.dumps(asdict(ban)), ms)
            elif kind == "unban":
                pipe.hdel(bans, value)
            elif kind == "mode":
                pipe.set(f"{self.prefix}mode", value, px=ttl)
            elif kind == "allow":
                pipe.sadd(f"{self.prefix}allow", value)
                pipe.pexpire(f"{self.prefix}allow", ttl)
            elif kind == "disallow":
                pipe.srem(f"{self.prefix}allow", value)
            event: dict[str, Any] = {"o": self.instance, "k": kind, "v": value}
            if ban is not None:
                event["ban"] = asdict(ban)
            pipe.publish(self.channel, orjson.dumps(event))

    def _write_counters(
        self, pipe: Any, batches: list[tuple[SharedCounter, list[tuple[str, float, str | None]]]], now: float
    ) -> list[tuple[SharedCounter, str, int]]:
        """One script call per (counter, key) touched, and one (counting nothing) per warm key
        not touched: what the others counted reaches this instance before its next event for
        that key. Returns what each result belongs to."""
        reads = []
        touched = {id(counter): counter for counter, _ in batches}
        self._seq += 1
        tag = f"{self.instance}:{self._seq}"
        for counter, events in [*batches, *self._warm(touched, now)]:
            by_key: dict[str, list[tuple[float, str | None]]] = {}
            for key, at, member in events:
                by_key.setdefault(key, []).append((at, member))
            for key in counter.refresh:
                by_key.setdefault(key, [])
            counter.refresh = []
            spec = counter.spec
            for key, items in by_key.items():
                base = f"{self.prefix}c:{counter.name}:{key}"
                if spec.precision == "exact":
                    batch = orjson.dumps(
                        items[-spec.cap :] if spec.distinct else [(at, None) for at, _ in items[-spec.cap :]]
                    )
                    pipe.evalsha(
                        self._scripts[EXACT], 1, base, now, spec.window, spec.cap, f"{tag}:{key}", batch
                    )
                else:
                    bucket = math.floor(now / spec.window)
                    weight = 1.0 - (now - bucket * spec.window) / spec.window
                    keys = (f"{base}:{bucket}", f"{base}:{bucket - 1}")
                    extra = [orjson.dumps([m or "" for _, m in items])] if spec.distinct else []
                    pipe.evalsha(self._scripts[APPROX], 2, *keys, spec.window, weight, len(items), *extra)
                own = counter.own.pop(key, None)
                reads.append((counter, key, counter.local.peek(key, now) if own is None else own))
        return reads

    def _warm(
        self, touched: dict[int, SharedCounter], now: float
    ) -> list[tuple[SharedCounter, list[tuple[str, float, str | None]]]]:
        """Counters with warm keys to refresh (their `refresh` lists filled): keys at least
        halfway to their threshold, touched within WARM_FOR seconds, at most MAX_WARM."""
        out: list[tuple[SharedCounter, list[tuple[str, float, str | None]]]] = []
        budget = MAX_WARM
        for counter in self._counters.values():
            if not counter.warm:
                continue
            for key, last in list(counter.warm.items()):
                if now - last > WARM_FOR or budget <= 0:
                    del counter.warm[key]
                    continue
                budget -= 1
                counter.refresh.append(key)
            if counter.refresh and id(counter) not in touched:
                out.append((counter, []))
        return out

    def _resync(self, bans: dict[bytes, bytes], mode: bytes | None, allow: set[bytes], now: float) -> None:
        """Make the local view match Redis, except for changes still queued here."""
        queued = {value for _, value, _ in self._ops}
        remote: dict[str, Ban] = {}
        for raw in bans.values():
            ban = _ban(raw)
            if ban is not None and ban.until > now:
                remote[ban.key] = ban
        local = self.bans.local
        for ban in local.all():
            if ban.key not in remote and ban.key not in queued:
                local.pop(ban.key)
        for ban in remote.values():
            if ban.key not in queued:
                self._apply_ban(ban)
        if mode is not None and mode.decode() != self._mode and "mode" not in {k for k, _, _ in self._ops}:
            self._apply("mode", mode.decode())
        shared = {item.decode() for item in allow}
        for cidr in sorted(shared - self._allow - queued):
            self._apply("allow", cidr)
        for cidr in sorted(self._allow - shared - queued):
            self._apply("disallow", cidr)

    def _apply_ban(self, ban: Ban) -> None:
        """Another instance's ban (an event, or found in Redis by a sync): kept here, and the
        owner told of a new one (it closes the banned client's connections)."""
        current = self.bans.local.get(ban.key)
        self._history[ban.key] = (ban.count, ban.since)
        if current != ban:
            self.bans.local.put(ban)
            self._tell("ban", ban.key)

    def _apply(self, kind: str, value: str) -> None:
        """Another instance's mode or allowlist change: remember it and tell the owner."""
        if kind == "mode":
            self._mode = value
        elif kind == "allow":
            self._allow.add(value)
        else:
            self._allow.discard(value)
        self._tell(kind, value)

    def _tell(self, kind: str, value: str) -> None:
        if self.listener is None:
            return
        try:
            self.listener(kind, value)
        except Exception:
            logger.exception("state listener failed on %s", kind)

    def _degrade(self, error: BaseException) -> None:
        self._failures += 1
        # Redis may come back empty: the first round trip that succeeds writes this instance's
        # bans, mode and allowlist before it reads the others', so the resync keeps them.
        self._writeback = True
        self.last_error = f"{type(error).__name__}: {error}"
        if self.degraded:
            return
        self.degraded = True
        self.outages += 1
        logger.warning(
            "state: Redis is unreachable (%s): counting locally, bans and changes queued until it returns",
            self.last_error,
        )
        self._tell("degraded", self.last_error)

    def _recovered(self) -> None:
        self._failures = 0
        if not self.degraded:
            return
        self.degraded = False
        logger.warning("state: Redis is back: writing back queued bans and changes, resyncing")
        self._tell("recovered", self.last_error or "")

    # -- the events task ---------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        assert self._client is not None
        failures = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_event(message["data"])
            except (RedisError, OSError, TimeoutError):
                failures += 1
                self._writeback = True  # the connection dropped: Redis may have restarted
                await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF)) - 1])
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2

    def _on_event(self, raw: bytes) -> None:
        try:
            event = orjson.loads(raw)
            origin, kind, value = event["o"], event["k"], event["v"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("state: ignoring a malformed event on %s", self.channel)
            return
        if origin == self.instance:
            return
        if kind == "ban":
            ban = _ban(orjson.dumps(event.get("ban")))
            if ban is not None and ban.until > self.clock():
                self._apply_ban(ban)
        elif kind == "unban":
            self.bans.local.pop(value)
        elif kind in ("mode", "allow", "disallow"):
            self._apply(kind, value)


def _ban(raw: bytes) -> Ban | None:
    try:
        data = orjson.loads(raw)
        return Ban(**data)
    except (orjson.JSONDecodeError, TypeError):
        logger.warning("state: ignoring a malformed ban in Redis")
        return None
