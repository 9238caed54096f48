"""``POST /debug/explain``: a JSON request description in, its explanation out.

Off unless the operator passes ``--enable-debug-endpoints``; then it is one more
admin route (loopback by default) that runs the explanation walk against the
snapshot serving at that moment. Nothing of the Check path changes.
"""

from __future__ import annotations

import json

from authz.explain.request import RequestSpecError, spec_from_json
from authz.explain.walk import explain
from authz.pipeline.snapshot import Snapshot

__all__ = ["explain_request"]


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": message}).encode()


def explain_request(snapshot: Snapshot, body: bytes, now: float,
                    default_namespace: str = "default") -> tuple[int, bytes]:
    """(HTTP status, JSON): 200 with the explanation, 400 naming what to fix."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body must be a JSON request description, e.g. "
                      '{"url": "http://api.local/orders", "namespace": "shop"}')
    try:
        view = spec_from_json(data).view(default_namespace)
    except RequestSpecError as exc:
        return _error(400, str(exc))
    out = explain(snapshot, view, now).to_json()
    out["snapshot_version"] = snapshot.version
    return 200, json.dumps(out, indent=2).encode()
