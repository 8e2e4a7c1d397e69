"""The request as the router sees it, parsed from an OpenAI-style chat payload."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from router.config import Preference
from router.errors import RequestError

ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Request:
    """One chat request. ``prompt`` (the last user turn) is what the classifier reads."""

    messages: tuple[Message, ...]
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tenant: str = "default"
    user_id: str = ""
    max_tokens: int | None = None
    preference: Preference | None = None
    generation: str = ""  # canonical JSON of the parameters that shape the answer (max_tokens, temperature, ...)

    @property
    def prompt(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")

    @property
    def n_turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")

    @property
    def conversation(self) -> str:
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)

    @property
    def input_tokens(self) -> int:
        return estimate_tokens(self.conversation)


def estimate_tokens(text: str) -> int:
    """Token count without a tokenizer: ~4 characters per token (English BPE average)."""
    return max(1, (len(text) + 3) // 4)


def _no_constant(name: str) -> Any:
    """Python's json accepts ``NaN``/``Infinity``; JSON does not, and an upstream (httpx) refuses to send
    them -- a client's NaN must be its 400 here, not a failed model call that trips circuit breakers."""
    raise RequestError(f"not valid JSON ({name} is not a JSON number)")


def _finite_float(text: str) -> float:
    """``1e999`` parses to inf: the same refusal as ``Infinity`` (httpx would not send it either)."""
    x = float(text)
    if not math.isfinite(x):
        raise RequestError(f"not valid JSON ({text[:40]} is out of range for a JSON number)")
    return x


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """Strict UTF-8 -> JSON -> object; the one place raw client/file bytes become a dict.

    Raises ``RequestError`` whose message completes "<what> is ..." / "<what> must ...".
    """
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise RequestError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from e
    try:
        obj = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        where = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno} column {e.colno}"
        raise RequestError(f"not valid JSON ({e.msg} at {where})") from e
    if not isinstance(obj, dict):
        raise RequestError(f"must be a JSON object; got {type(obj).__name__}")
    return obj


def parse_messages(payload: Any, *, max_prompt_chars: int) -> tuple[Message, ...]:
    """Validate the ``messages`` field of a chat payload; errors name the offending item."""
    if not isinstance(payload, dict):
        raise RequestError(f"request body must be a JSON object, got {type(payload).__name__}")
    messages = payload.get("messages")
    if messages is None:
        raise RequestError("missing required field 'messages'", field="messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", field="messages")
    parsed = tuple(_parse_message(i, m) for i, m in enumerate(messages))
    if not any(m.role == "user" for m in parsed):
        raise RequestError("'messages' has no message with role 'user'", field="messages")
    total = sum(len(m.content) for m in parsed)
    if total > max_prompt_chars:
        raise RequestError(
            f"prompt is {total} characters; the limit is {max_prompt_chars}", status=413, field="messages"
        )
    return parsed


def _parse_message(i: int, m: Any) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise RequestError(f"{where} must be an object with 'role' and 'content'", field=where)
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}", field=f"{where}.role")
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        content = "".join(_text_parts(where, content))
    if not isinstance(content, str):
        raise RequestError(f"{where}.content must be a string; got {type(content).__name__}", field=f"{where}.content")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as e:  # e.g. an escaped lone surrogate "\ud800": valid JSON, not valid text
        raise RequestError(f"{where}.content is not valid Unicode text at character {e.start}",
                           field=f"{where}.content") from e
    if role == "user" and not content.strip():
        raise RequestError(f"{where}.content is empty", field=f"{where}.content")
    return Message(role=role, content=content)


def _text_parts(where: str, parts: list[Any]) -> list[str]:
    texts = []
    for j, part in enumerate(parts):
        if isinstance(part, dict) and part.get("type") == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(f"{where}.content[{j}].text must be a string; got {type(text).__name__}",
                                   field=f"{where}.content[{j}].text")
            texts.append(text)
    return texts


def parse_preference(header: str) -> Preference:
    """``x-turnout-preference: quality=1,cost=0.3,latency=0.1`` (missing keys keep their defaults)."""
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in Preference.model_fields:
            raise RequestError(f"x-turnout-preference: expected key=value pairs with keys "
                               f"{', '.join(Preference.model_fields)}; got {part!r}", field="x-turnout-preference")
        try:
            values[key] = float(raw)
        except ValueError as e:
            raise RequestError(f"x-turnout-preference: {key} must be a number; got {raw.strip()!r}",
                               field="x-turnout-preference") from e
        if not values[key] >= 0 or values[key] == float("inf"):
            raise RequestError(f"x-turnout-preference: {key} must be a finite number >= 0; got {raw.strip()!r}",
                               field="x-turnout-preference")
    return Preference(**values)
