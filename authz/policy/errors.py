"""Errors that tell a user exactly where a policy is wrong."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int
    """1-based line of the YAML node (the document start when nothing closer is known)."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class PolicyError(ValueError):
    """A policy problem: ``file:line: resource: field: message``."""

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


class PolicyErrors(ValueError):
    """Every problem found in one load, so a user fixes them all in one pass."""

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
