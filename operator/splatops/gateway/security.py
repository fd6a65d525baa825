"""Who may call the gateway, and how often it may create trainings.

Authentication is optional and off by default (the original API had none): a bearer token (from
a Secret, as a value or a mounted file that is re-read when the Secret is rotated), and/or the
user name an authenticating proxy puts in a header (trusted only when its name is configured;
the chart's NetworkPolicy keeps everyone but the proxy away). POSTs are rate limited per client
with a token bucket, in each replica's memory.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import os
import time
from collections.abc import Callable

from fastapi import HTTPException, Request

from splatops.gateway.settings import GatewaySettings

BEARER = "bearer "
MAX_CLIENTS = 10_000  # buckets kept; full (idle) ones are dropped first


class TokenSource:
    """The expected bearer token: the setting's value, or the file's content (re-read on change)."""

    def __init__(self, value: str | None, path: str | None) -> None:
        self._value = value.encode() if value else None
        self._path = path
        self._seen: tuple[int, int] | None = None
        if path:
            self.current()  # a missing or empty file fails at startup, not at the first request

    def current(self) -> bytes:
        if not self._path:
            return self._value or b""
        st = os.stat(self._path)
        if self._seen != (st.st_mtime_ns, st.st_size):
            with open(self._path, "rb") as f:
                token = f.read().strip()
            if not token:
                raise ValueError(f"the gateway's token file {self._path} is empty")
            self._value, self._seen = token, (st.st_mtime_ns, st.st_size)
        return self._value or b""


class Authenticator:
    """`identify(request)`: the client's identity for rate limiting, or HTTP 401."""

    def __init__(self, settings: GatewaySettings) -> None:
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self.tokens = TokenSource(token, settings.auth_token_file) if (token or settings.auth_token_file) else None
        self.proxy_header = settings.auth_proxy_header

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or bool(self.proxy_header)

    def identify(self, request: Request) -> str:
        address = request.client.host if request.client else "unknown"
        if not self.enabled:
            return f"ip:{address}"
        if self.proxy_header:
            user = request.headers.get(self.proxy_header, "").strip()
            if user:
                return f"user:{user}"
        if self.tokens is not None:
            given = request.headers.get("authorization", "")
            if given[: len(BEARER)].lower() == BEARER:
                if hmac.compare_digest(given[len(BEARER):].strip().encode(), _expected(self.tokens)):
                    return f"token:{address}"
                raise _unauthorized("invalid bearer token")
        raise _unauthorized("authentication required: " + self._how())

    def _how(self) -> str:
        ways = []
        if self.tokens is not None:
            ways.append("send `Authorization: Bearer <token>`")
        if self.proxy_header:
            ways.append(f"come through the authenticating proxy (header {self.proxy_header})")
        return " or ".join(ways)


def _expected(tokens: TokenSource) -> bytes:
    try:
        return tokens.current()
    except (OSError, ValueError) as exc:  # the Secret went away: refuse everyone, say why
        raise HTTPException(status_code=503, detail=f"the gateway cannot read its token: {exc}") from None


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status_code=401, detail=reason, headers={"WWW-Authenticate": 'Bearer realm="splatops"'})


@dataclasses.dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per client: `burst` requests at once, refilled at `per_minute`. 0 = no limit."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1, burst)
        self.clock = clock
        self.buckets: dict[str, _Bucket] = {}

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self.buckets.get(client) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        self.buckets[client] = bucket
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self._forget_idle(now)
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        if len(self.buckets) <= MAX_CLIENTS:
            return
        for key, b in list(self.buckets.items()):
            if b.tokens + (now - b.at) * self.rate >= self.burst:
                del self.buckets[key]
        while len(self.buckets) > MAX_CLIENTS:  # all busy: drop the oldest
            del self.buckets[next(iter(self.buckets))]

    def check(self, client: str) -> None:
        wait = self.take(client)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HTTPException(
                status_code=429,
                detail=f"too many training requests from this client: at most {self.burst} at once and "
                f"{self.rate * 60:g} per minute; retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
