"""The exceptions authz raises on purpose, under one root.

Every error a user can act on derives from ``AuthzError``, so the command line
turns any of them into one ``authz: error: ...`` line and the error's
``exit_code`` (``authz.cli.main``), and a program embedding authz catches them
all with one ``except``. Errors that were ``ValueError``s keep that base too.
This module imports nothing from authz: every layer may raise these.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["AuthzError", "ListenError", "MissingExtraError", "UsageError"]


class AuthzError(Exception):
    """Something authz cannot do as asked; the message says what and where.

    The command exits with ``exit_code`` (1 unless a subclass says otherwise).
    """

    exit_code: ClassVar[int] = 1


class UsageError(AuthzError):
    """A command-line argument or environment variable cannot be used: fix the
    flag the message names (``--help`` lists them). Exit code 2, as for argparse's
    own usage errors."""

    exit_code: ClassVar[int] = 2


class MissingExtraError(AuthzError, ImportError):
    """A feature needs an optional extra that is not installed: install it with the
    ``pip install 'authz[...]'`` the message gives."""

    def __init__(self, extra: str, feature: str, module: str | None = None) -> None:
        self.extra = extra
        self.feature = feature
        missing = f" (module {module} is missing)" if module else ""
        super().__init__(f"{feature} needs the optional '{extra}' extra{missing}: "
                         f"pip install 'authz[{extra}]'", name=module)


class ListenError(AuthzError, OSError):
    """A listen address cannot be bound: another process holds the port or the host
    is not an address of this machine. Stop the other process or pick another
    address (``--grpc-address``, ``--http-address``, ``--http-check-address``)."""
