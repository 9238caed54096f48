"""The transport-neutral request model: the view of one request, its peers'
addresses, and the workload scope it is for. The bottom layer: imports nothing
else of ``authz``."""

from authz.request.address import XFF, IPAddress, normalize_ip, original_client_ip, parse_ip
from authz.request.scope import (
    LABELS_KEY,
    NAMESPACE_KEY,
    Scope,
    ScopeError,
    parse_labels,
    resolve_scope,
)
from authz.request.view import Peer, RequestView, join_header, split_path

__all__ = [
    "LABELS_KEY",
    "NAMESPACE_KEY",
    "XFF",
    "IPAddress",
    "Peer",
    "RequestView",
    "Scope",
    "ScopeError",
    "join_header",
    "normalize_ip",
    "original_client_ip",
    "parse_ip",
    "parse_labels",
    "resolve_scope",
    "split_path",
]
