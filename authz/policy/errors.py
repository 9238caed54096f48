"""Errors that tell a user exactly where a policy is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from authz.errors import AuthzError

__all__ = ["Location", "PolicyError", "PolicyErrors"]


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int
    """1-based line of the YAML node (the document start when nothing closer is known)."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class PolicyError(AuthzError, ValueError):
    """A policy problem: ``file:line: resource: field: message``. Fix the field at
    that line (``authz validate`` lists every problem). Exit code 2."""

    exit_code: ClassVar[int] = 2

    def __init__(
        self,
        message: str,
        location: Location | None = None,
        resource: str = "",
        field: str = "",
    ) -> None:
        self.message = message
        self.location = location
        self.resource = resource
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [str(self.location)] if self.location else []
        parts += [p for p in (self.resource, self.field) if p]
        parts.append(self.message)
        return ": ".join(parts)


class PolicyErrors(AuthzError, ValueError):
    """Every problem found in one load, so a user fixes them all in one pass; each
    line names a file, line and field to fix. Exit code 2; a running server keeps
    its last good policies."""

    exit_code: ClassVar[int] = 2

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
