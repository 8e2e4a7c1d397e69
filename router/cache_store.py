"""Document store of the response cache: the answers live here, outside the in-process ANN index.

* ``MemoryDocumentStore`` -- the embedded default: a dict in the gateway process.
* ``RedisDocumentStore`` -- production: one ``redis-server`` shared by every gateway replica.
  A document is one Redis string ``{prefix}doc:{key}`` (JSON: tenant, category, context key, prompt,
  answer, model, created/expiry time, the embedding, and a sha256 checksum over all of it), written
  with a Redis expiry as garbage collection; the expiry time inside the document is what decides
  whether it may be served. Every insert also appends the key to the stream ``{prefix}stream``: the
  other replicas follow that stream and add the new entry to their own index, and a (re)started
  replica rebuilds its index by scanning ``{prefix}doc:*``.

Failure handling: a Redis error never reaches the caller. The call returns "nothing" (a miss, an
insert that did not happen), the error is logged (at most once per ``retry_after_s``) and counted in
``n_errors``, and Redis is not contacted again for ``retry_after_s`` so a dead server costs one
timeout, not one per request. A document that fails to decode or whose checksum does not match is
deleted, logged, counted in ``n_corrupt`` and never served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("turnout.cache")
DOC_FORMAT = 1


class CacheStoreSettings(BaseModel):
    """Where cached answers live (``ServeConfig.cache_store``).

    ``kind: memory`` keeps them in the gateway process; ``kind: redis`` uses the server at ``url``
    (``spawn_local: true`` lets ``turnout serve`` start a throwaway local ``redis-server`` on that
    port when none answers). ``key_prefix`` separates deployments sharing one Redis.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(default="turnout:cache:", min_length=1)
    spawn_local: bool = False
    socket_timeout_s: float = Field(default=0.05, gt=0)
    retry_after_s: float = Field(default=1.0, ge=0)
    stream_maxlen: int = Field(default=200_000, gt=0)


@dataclass(frozen=True, slots=True)
class CachedDoc:
    """One cached answer. ``key`` = partition-scoped id (see ``doc_key``)."""

    key: str
    tenant: str
    category: str
    context_key: str
    text: str
    answer: str
    model: str
    created_s: float
    expires_s: float
    vector: np.ndarray | None = None


def doc_key(tenant: str, category: str, exact: str) -> str:
    """Partition-scoped document id: the tenant and category are hashed in, so two tenants never
    share a key even for the same prompt."""
    scope = hashlib.sha256(f"{tenant}\x1f{category}".encode("utf-8", "replace")).hexdigest()[:24]
    return f"{scope}:{exact}"


def encode_doc(doc: CachedDoc) -> bytes:
    body: dict[str, Any] = {
        "v": DOC_FORMAT, "key": doc.key, "tenant": doc.tenant, "category": doc.category, "ctx": doc.context_key,
        "text": doc.text, "answer": doc.answer, "model": doc.model, "created_s": doc.created_s,
        "expires_s": doc.expires_s,
        "vec": None if doc.vector is None else base64.b64encode(np.asarray(doc.vector, dtype="<f4").tobytes()).decode(),
    }
    raw = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    body["sum"] = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def decode_doc(raw: bytes) -> CachedDoc:
    """Inverse of ``encode_doc``. Raises ``ValueError`` for anything malformed or tampered with."""
    try:
        body = json.loads(raw.decode("utf-8", "surrogatepass"))
        checksum = body.pop("sum")
        canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        if hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest() != checksum:
            raise ValueError("checksum mismatch")
        if body["v"] != DOC_FORMAT:
            raise ValueError(f"document format {body['v']!r}, expected {DOC_FORMAT}")
        vec = None if body["vec"] is None else np.frombuffer(base64.b64decode(body["vec"]), dtype="<f4").astype(np.float32)
        return CachedDoc(str(body["key"]), str(body["tenant"]), str(body["category"]), str(body["ctx"]),
                         str(body["text"]), str(body["answer"]), str(body["model"]), float(body["created_s"]),
                         float(body["expires_s"]), vec)
    except ValueError:
        raise
    except Exception as e:  # KeyError, TypeError, binascii.Error, UnicodeDecodeError, AttributeError
        raise ValueError(f"{type(e).__name__}: {e}") from e


class MemoryDocumentStore:
    """Documents in a dict; nothing is shared, so ``follow`` and ``scan`` have nothing to report."""

    kind = "memory"

    def __init__(self) -> None:
        self._docs: dict[str, CachedDoc] = {}
        self.n_errors = 0
        self.n_corrupt = 0

    def put(self, doc: CachedDoc, ttl_s: float) -> bool:
        self._docs[doc.key] = doc
        return True

    def get_many(self, keys: Sequence[str]) -> list[CachedDoc | None]:
        return [self._docs.get(k) for k in keys]

    def delete(self, keys: Sequence[str]) -> None:
        for k in keys:
            self._docs.pop(k, None)

    def scan(self) -> Iterator[CachedDoc]:
        return iter(())

    def stream_position(self) -> str | None:
        return None

    def read_stream(self, after: str, block_ms: int | None = None) -> tuple[str, list[str]] | None:
        return after, []

    def close(self) -> None:
        self._docs.clear()


class RedisDocumentStore:
    """Documents in Redis (see the module docstring for the layout and the failure rules)."""

    kind = "redis"

    def __init__(self, settings: CacheStoreSettings) -> None:
        import redis

        self.settings = settings
        self.prefix = settings.key_prefix
        self._stream = f"{self.prefix}stream"
        self._client = redis.Redis.from_url(settings.url, socket_timeout=settings.socket_timeout_s,
                                            socket_connect_timeout=settings.socket_timeout_s)
        # the follower blocks on XREAD: it needs its own connection with a longer read timeout
        self._follow_client = redis.Redis.from_url(settings.url, socket_timeout=settings.socket_timeout_s + 2.0,
                                                   socket_connect_timeout=settings.socket_timeout_s)
        self._down_until = 0.0
        self.n_errors = 0
        self.n_corrupt = 0

    # -- guarded calls -------------------------------------------------------------------------
    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, e: Exception) -> None:
        self.n_errors += 1
        if self._available():
            log.warning("cache store %s failed (%s: %s); treating as a miss for %.1fs",
                        what, type(e).__name__, e, self.settings.retry_after_s)
        self._down_until = time.monotonic() + self.settings.retry_after_s

    def _errors(self) -> tuple[type[BaseException], ...]:
        import redis

        return (redis.RedisError, OSError)

    # -- documents -----------------------------------------------------------------------------
    def put(self, doc: CachedDoc, ttl_s: float) -> bool:
        if not self._available():
            return False
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(f"{self.prefix}doc:{doc.key}", encode_doc(doc), px=max(1, int(ttl_s * 1000)))
            pipe.xadd(self._stream, {"k": doc.key}, maxlen=self.settings.stream_maxlen, approximate=True)
            pipe.execute()
            return True
        except self._errors() as e:
            self._failed("put", e)
            return False

    def get_many(self, keys: Sequence[str]) -> list[CachedDoc | None]:
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            raws = self._client.mget([f"{self.prefix}doc:{k}" for k in keys])
        except self._errors() as e:
            self._failed("get", e)
            return [None] * len(keys)
        return [self._decode(k, raw) for k, raw in zip(keys, raws)]

    def delete(self, keys: Sequence[str]) -> None:
        if not keys or not self._available():
            return
        try:
            self._client.delete(*[f"{self.prefix}doc:{k}" for k in keys])
        except self._errors() as e:
            self._failed("delete", e)

    def _decode(self, key: str, raw: bytes | None) -> CachedDoc | None:
        if raw is None:
            return None
        try:
            doc = decode_doc(raw)
            if doc.key != key:
                raise ValueError(f"stored under {key!r} but names {doc.key!r}")
            return doc
        except ValueError as e:
            self.n_corrupt += 1
            log.warning("dropping corrupted cache document %s: %s", key, e)
            self.delete([key])
            return None

    def scan(self) -> Iterator[CachedDoc]:
        """Every decodable document (for an index rebuild); yields nothing while Redis is down."""
        if not self._available():
            return
        try:
            batch: list[str] = []
            for raw_key in self._client.scan_iter(match=f"{self.prefix}doc:*", count=1000):
                batch.append(raw_key.decode()[len(self.prefix) + 4:])
                if len(batch) == 500:
                    yield from (d for d in self.get_many(batch) if d is not None)
                    batch = []
            yield from (d for d in self.get_many(batch) if d is not None)
        except self._errors() as e:
            self._failed("scan", e)

    # -- the insert stream -----------------------------------------------------------------------
    def stream_position(self) -> str | None:
        """Id of the newest stream entry ("0-0" when empty); None when Redis is unreachable."""
        if not self._available():
            return None
        try:
            last = self._client.xrevrange(self._stream, count=1)
            return last[0][0].decode() if last else "0-0"
        except self._errors() as e:
            self._failed("stream position", e)
            return None

    def read_stream(self, after: str, block_ms: int | None = None) -> tuple[str, list[str]] | None:
        """Keys appended after ``after``: (new position, keys); None when Redis failed."""
        if not self._available():
            return None
        client = self._follow_client if block_ms else self._client
        try:
            out = client.xread({self._stream: after}, count=1000, block=block_ms)
        except self._errors() as e:
            self._failed("stream read", e)
            return None
        keys, pos = [], after
        for _, entries in out or []:
            for entry_id, fields in entries:
                pos = entry_id.decode()
                keys.append(fields[b"k"].decode())
        return pos, keys

    def close(self) -> None:
        for c in (self._client, self._follow_client):
            try:
                c.close()
            except self._errors():
                pass
