"""limit-count: at most `count` requests per key in a fixed window of `time_window` seconds.

APISIX's limit-count (priority 1002, access phase). Over the limit: `rejected_code` (503) with
`{"error_msg": rejected_msg}`, or nginx's error page without a message. With
`show_limit_quota_header`, allowed and refused responses alike carry X-RateLimit-Limit,
X-RateLimit-Remaining and X-RateLimit-Reset (seconds until the window resets).

Where the count lives (`policy`):

- `local`: the node's shared memory (ando/plugins/shared.py), so the limit holds for the node
  whatever the number of workers;
- `redis`: one Redis, so every node pointed at it shares the count. One Lua script increments
  and sets the window's expiry atomically. Redis unreachable: 500
  `{"error_msg": "failed to limit count"}`, or the request goes through with
  `allow_degradation`. (`redis-cluster` is not supported.)

A counter is keyed by where the configuration was written (a service's limit counts once for all
its routes), the window length and the request's key; with `group`, by the group instead, so
every configuration naming it shares one counter (and `ando validate` refuses a group configured
two ways, as APISIX does: ando/config/compile.py).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext
from ando.plugins.traffic.limit_key import LimitKey, rejection

_FAILED = Response(500, {"error_msg": "failed to limit count"})
_LIMIT = b"X-RateLimit-Limit"
_REMAINING, _REMAINING_LOWER = b"X-RateLimit-Remaining", b"x-ratelimit-remaining"
_RESET, _RESET_LOWER = b"X-RateLimit-Reset", b"x-ratelimit-reset"

# INCR the window's counter; the first request of a window starts its expiry. Returns the count
# and the milliseconds left. (A counter left without expiry, which nothing here makes, is given
# one rather than counting forever.)
_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""

# At most one "Redis is failing" line per this many seconds per worker and server.
_ERROR_LOG_INTERVAL = 5.0


class RedisWindow:
    """One worker's client for one Redis server (host, port, db, credentials, TLS), shared by
    every limit-count instance that names it and kept across reloads."""

    __slots__ = ("_client", "_last_error", "_script", "address")

    def __init__(self, conf: dict[str, Any]) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        timeout = conf["redis_timeout"] / 1000.0
        kwargs: dict[str, Any] = {
            "host": conf["redis_host"],
            "port": conf["redis_port"],
            "db": conf["redis_database"],
            "username": conf.get("redis_username"),
            "password": conf.get("redis_password") or None,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # One attempt, as APISIX: a slow or absent Redis answers within redis_timeout.
            "retry": Retry(NoBackoff(), 0),
        }
        if conf["redis_ssl"]:
            verify = conf["redis_ssl_verify"]
            kwargs["connection_class"] = SSLConnection
            kwargs["ssl_cert_reqs"] = "required" if verify else "none"
            kwargs["ssl_check_hostname"] = verify
        # Bounded like APISIX's keepalive pool: a burst waits (up to the timeout) for a
        # connection rather than opening thousands.
        pool = BlockingConnectionPool(max_connections=100, timeout=timeout, **kwargs)
        self._client = Redis(connection_pool=pool)
        self._script = self._client.register_script(_SCRIPT)
        self._last_error = 0.0
        self.address = f"{conf['redis_host']}:{conf['redis_port']}"

    async def incr(self, key: str, window_ms: int) -> tuple[int, int]:
        """(requests counted in this window, milliseconds until it resets)."""
        n, ttl = await self._script(keys=[key], args=[window_ms])
        return int(n), int(ttl)

    def should_log_error(self) -> bool:
        now = time.monotonic()
        if now - self._last_error < _ERROR_LOG_INTERVAL:
            return False
        self._last_error = now
        return True


def redis_client(build: BuildContext, conf: dict[str, Any]) -> RedisWindow:
    ident = (
        "limit-count:redis",
        conf["redis_host"],
        conf["redis_port"],
        conf["redis_database"],
        conf.get("redis_username"),
        conf.get("redis_password"),
        conf["redis_ssl"],
        conf["redis_ssl_verify"],
        conf["redis_timeout"],
    )
    return build.per_worker(ident, lambda: RedisWindow(conf))


class LimitCount(Plugin):
    name = "limit-count"
    priority = 1002

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.count: int = conf["count"]
        self.window: int = conf["time_window"]
        # The headers' entries as RequestContext.set_response_entries takes them: made of digits
        self.limit_entry = (_LIMIT, _LIMIT.lower(), b"%d" % self.count, False)
        self.key = LimitKey(conf["key_type"], conf["key"])
        group = conf.get("group")
        where = f"group:{group}" if group is not None else build.owner
        self.prefix = f"limit-count:{where}:{self.window}:"
        self.show_headers: bool = conf["show_limit_quota_header"]
        self.rejected = rejection(conf["rejected_code"], conf.get("rejected_msg"))
        self.allow_degradation: bool = conf["allow_degradation"]
        self.shared = build.shared
        self.log_event = build.log
        self.redis: RedisWindow | None = None
        if conf["policy"] == "redis":
            self.redis = redis_client(build, conf)
            # An async access phase for this policy only: the local one stays synchronous.
            self.access = self._access_redis  # type: ignore[method-assign]

    def access(self, ctx: RequestContext) -> Response | None:
        used, expires = self.shared.incr(self.prefix + self.key(ctx), 1, self.window)
        return self._decide(ctx, int(used), math.ceil(expires - time.time()))

    async def _access_redis(self, ctx: RequestContext) -> Response | None:
        redis = self.redis
        assert redis is not None
        try:
            used, ttl_ms = await redis.incr(
                "ando:" + self.prefix + self.key(ctx), self.window * 1000
            )
        except Exception as e:  # any Redis, socket or timeout error: the limit is unknown
            if redis.should_log_error():
                self.log_event(
                    "limit_count_redis_error",
                    level="error",
                    redis=redis.address,
                    route_id=ctx.route_id,
                    error=repr(e),
                    allowed=self.allow_degradation,
                )
            return None if self.allow_degradation else _FAILED
        return self._decide(ctx, used, math.ceil(ttl_ms / 1000))

    def _decide(self, ctx: RequestContext, used: int, reset: int) -> Response | None:
        remaining = self.count - used
        if remaining < 0:
            if self.show_headers:
                self._headers(ctx, 0, reset)
            return self.rejected
        if self.show_headers:
            self._headers(ctx, remaining, reset)
        return None

    def _headers(self, ctx: RequestContext, remaining: int, reset: int) -> None:
        ctx.set_response_entries(
            [
                self.limit_entry,
                (_REMAINING, _REMAINING_LOWER, b"%d" % remaining, False),
                (_RESET, _RESET_LOWER, b"%d" % max(reset, 0), False),
            ]
        )
