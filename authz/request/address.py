"""Addresses: parsing peers' IPs, and the original client address the way Envoy's
HCM derives it.

Envoy gives an ext_authz server only the direct peer (``attributes.source``).
Istio's ``remoteIpBlocks`` and ``remote.ip`` match what Envoy RBAC calls
``remote_ip``: the address the connection manager computed from
``x-forwarded-for`` and ``xff_num_trusted_hops``. The ext_authz filter runs after
the HCM edited ``x-forwarded-for`` (with ``use_remote_address: true`` it appended
the peer), so the same rule works for both settings: skip ``trusted_hops``
entries from the right and take the next one; when there are not enough
entries, or that entry is not an IP, use the direct peer.
``--xff-num-trusted-hops`` must equal the listener's ``xff_num_trusted_hops``.
"""

from __future__ import annotations

import ipaddress

from authz.request.view import Peer, RequestView

__all__ = ["XFF", "IPAddress", "make_peer", "normalize_ip", "original_client_ip", "parse_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` names, None if it is not one (a pipe path, a name)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normalize_ip(text: str) -> str:
    """Canonical text of an address (``::FFFF:1.2.3.4`` and ``0:0::1`` forms differ
    from what CIDR matching prints); anything else is kept as sent."""
    ip = parse_ip(text)
    return text if ip is None else str(ip)


def make_peer(address: str, port: int | None, principal: str) -> Peer:
    """A peer as a request names it; pure, so the snapshot memoizes it (``Snapshot.peer``)."""
    return Peer(ip=normalize_ip(address) if address else "", port=port, principal=principal)


XFF = "x-forwarded-for"
"""The one header the original client IP is derived from."""


def original_client_ip(view: RequestView, trusted_hops: int = 0) -> str:
    xff = view.headers.get(XFF)
    if not xff:
        return view.source.ip
    entries = xff.split(",")
    if trusted_hops >= len(entries):
        return view.source.ip
    candidate = entries[len(entries) - 1 - trusted_hops].strip()
    return view.source.ip if parse_ip(candidate) is None else normalize_ip(candidate)
