"""The turnout exception hierarchy.

    RouterError
     ├── ConfigError            a YAML config does not validate (one "loc -> msg" line per problem)
     ├── ArtifactError          a bundle is missing, corrupt, truncated or mismatched
     │    └── FeatureMismatchError   the bundle was trained with another feature spec
     ├── LogSchemaError         a logged-traffic table breaks the schema (names field and row)
     ├── NotFittedError         a trainer was used before ``fit``
     └── RequestError           a client sent something we cannot route (maps to HTTP 4xx)

Messages say what failed, the bad value, and what is allowed.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base class for every error turnout raises on purpose."""


class ConfigError(RouterError):
    """A configuration file or object is invalid."""


class ArtifactError(RouterError):
    """A bundle cannot be loaded; the previous bundle (if any) keeps serving."""


class FeatureMismatchError(ArtifactError):
    """The bundle's feature spec differs from the one this code computes."""


class LogSchemaError(RouterError):
    """Logged traffic does not match the schema in ``router.log_schema``."""


class NotFittedError(RouterError):
    """A trainer's ``export``/``predict`` was called before ``fit``."""


class RequestError(RouterError):
    """A client request is malformed; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
