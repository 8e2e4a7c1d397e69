"""Tenants, API keys and per-tenant rate limits for the gateway.

Keys are configured per tenant, literally or as the names of environment variables holding them (so
secrets stay out of YAML). With no keys configured at all, authentication is off and every request
belongs to the tenant ``default`` (the loopback default). Keys are kept only as sha256 digests.

Rate limits are token buckets held per gateway replica: with N gateway replicas a tenant can get up
to N times its configured rate (documented in the README).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping

from pydantic import Field, model_validator

from router.config import _Frozen

DEFAULT_TENANT = "default"


class RateLimit(_Frozen):
    requests_per_s: float = Field(gt=0, description="sustained requests per second")
    burst: float = Field(default=10.0, ge=1, description="bucket size: requests allowed at once after idling")


class TenantConfig(_Frozen):
    api_keys: tuple[str, ...] = Field(default=(), description="literal keys (prefer api_key_envs)")
    api_key_envs: tuple[str, ...] = Field(default=(), description="environment variables holding keys")
    rate_limit: RateLimit | None = None
    admin: bool = Field(default=False, description="may call /admin/* when keys are on")

    @model_validator(mode="after")
    def _keys_not_empty(self) -> TenantConfig:
        if any(not k for k in self.api_keys):
            raise ValueError("api_keys must not contain an empty key")
        return self


class AuthError(Exception):
    """Missing or unknown API key (HTTP 401)."""


class TokenBucket:
    """Classic token bucket; ``take()`` returns 0.0 when admitted, else the seconds until a token."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.updated = clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> float:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= n:
                self.tokens -= n
                return 0.0
            return (n - self.tokens) / self.rate


class TenantDirectory:
    """Resolves a request's key to its tenant and applies that tenant's rate limit."""

    def __init__(self, tenants: Mapping[str, TenantConfig], default_rate_limit: RateLimit | None = None,
                 env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        self.tenants = dict(tenants)
        self._by_digest: dict[str, str] = {}
        for name, t in self.tenants.items():
            keys = list(t.api_keys)
            for var in t.api_key_envs:
                value = env.get(var, "")
                if not value:
                    raise ValueError(f"tenant {name!r}: environment variable {var} (api_key_envs) is not set or empty")
                keys.append(value)
            for key in keys:
                digest = _digest(key)
                if digest in self._by_digest and self._by_digest[digest] != name:
                    raise ValueError(f"tenants {self._by_digest[digest]!r} and {name!r} share an API key")
                self._by_digest[digest] = name
        self.keys_required = bool(self._by_digest)
        self.default_rate_limit = default_rate_limit
        self._clock = clock
        self._buckets: dict[str, TokenBucket | None] = {}

    def authenticate(self, authorization: str | None, x_api_key: str | None = None) -> str:
        """Tenant for the request's ``Authorization: Bearer <key>`` (or ``x-api-key``) header."""
        if not self.keys_required:
            return DEFAULT_TENANT
        key = bearer_key(authorization) or (x_api_key or "").strip()
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        tenant = self._by_digest.get(_digest(key))
        if tenant is None:
            raise AuthError("invalid API key")
        return tenant

    def is_admin(self, tenant: str) -> bool:
        """Admin endpoints: open when keys are off (loopback default), else admin tenants only."""
        return not self.keys_required or bool(self.tenants.get(tenant) and self.tenants[tenant].admin)

    def retry_after(self, tenant: str) -> float:
        """0.0 when the request may proceed, else seconds to wait (answer 429 with Retry-After)."""
        if tenant not in self._buckets:
            t = self.tenants.get(tenant)
            limit = t.rate_limit if t and t.rate_limit else self.default_rate_limit
            self._buckets[tenant] = TokenBucket(limit.requests_per_s, limit.burst, self._clock) if limit else None
        bucket = self._buckets[tenant]
        return 0.0 if bucket is None else bucket.take()


def retry_after_header(seconds: float) -> str:
    """HTTP Retry-After takes whole seconds; never 0 for a refused request."""
    return str(max(1, math.ceil(seconds)))


def bearer_key(authorization: str | None) -> str:
    if not authorization:
        return ""
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
