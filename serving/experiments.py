"""A/B experiments: arms (bundle + traffic weight) and sticky assignment by a stable hash.

The assignment key is the ``x-turnout-user`` header, else the body's ``user``, else the tenant
(``assign_by: tenant`` always uses the tenant). ``sha256(key)`` -> a point in [0, 1) -> the arm whose
cumulative weight bucket holds it. The same key always gets the same arm, on every gateway replica
and after restarts, as long as the arm list and weights are unchanged. The first arm is the control.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field, model_validator

from router.config import _Frozen


class Arm(_Frozen):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    bundle: str = Field(min_length=1, description="bundle directory (relative paths resolve like `bundle`)")
    weight: float = Field(default=1.0, gt=0)


class ExperimentConfig(_Frozen):
    arms: tuple[Arm, ...] = Field(min_length=1)
    assign_by: Literal["user", "tenant"] = "user"

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique; repeated: {', '.join(dupes)}")
        return self


def assignment_key(assign_by: str, tenant: str, user_header: str | None = None, body_user: object = None) -> str:
    """The raw string that is hashed (contract 4): header, else body ``user``, else tenant."""
    if assign_by == "user":
        if user_header:
            return user_header
        if isinstance(body_user, str) and body_user:
            return body_user
    return tenant


def hash_unit(key: str) -> float:
    """A stable point in [0, 1) for ``key`` (first 8 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2.0**64


def assign_arm(key: str, arms: tuple[Arm, ...] | list[Arm]) -> str:
    total = sum(a.weight for a in arms)
    u = hash_unit(key) * total
    acc = 0.0
    for arm in arms:
        acc += arm.weight
        if u < acc:
            return arm.name
    return arms[-1].name
