"""What the RBAC engine reads about one request, computed once by the caller.

The engine never looks at raw tokens or headers to decide who the caller is:
RequestAuthentication has already run (as Envoy's jwt_authn does before the
RBAC filters) and hands over the verified payload; the caller has already
applied its X-Forwarded-For rule to find the original client IP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from authz.request.address import IPAddress, parse_ip
from authz.request.view import RequestView

__all__ = ["AuthzContext", "RequestAuth"]


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """A verified JWT: the payload Envoy's jwt_authn would put in its metadata."""

    claims: Mapping[str, Any]
    """The verified payload; space-delimited claims (``scope``...) are already lists."""


@dataclass(frozen=True)
class AuthzContext:
    """One request as the engine sees it.

    Not slotted on purpose: the parsed IP addresses are cached on the instance
    (``cached_property`` writes the instance ``__dict__``) so each is parsed at
    most once per request however many CIDR conditions read it.
    """

    view: RequestView
    auth: RequestAuth | None
    """None when the request carried no valid token."""
    remote_ip: str
    """The original client IP (the caller's XFF rule); ``view.source.ip`` if unknown."""

    @cached_property
    def source_address(self) -> IPAddress | None:
        """Envoy ``direct_remote_ip``: the downstream peer (``ipBlocks``, ``source.ip``)."""
        return parse_ip(self.view.source.ip)

    @cached_property
    def remote_address(self) -> IPAddress | None:
        """Envoy ``remote_ip``: the original client (``remoteIpBlocks``, ``remote.ip``)."""
        return parse_ip(self.remote_ip)

    @cached_property
    def destination_address(self) -> IPAddress | None:
        """The local address the request arrived on (``destination.ip``)."""
        return parse_ip(self.view.destination.ip)

    @property
    def claims(self) -> Mapping[str, Any] | None:
        return self.auth.claims if self.auth is not None else None

    @property
    def peer_principal(self) -> str | None:
        """The peer certificate identity; None without mTLS (Envoy ``authenticated`` fails)."""
        return self.view.source.principal or None
