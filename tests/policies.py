"""Policies many test modules serve, written once.

Each returns the YAML of one Istio resource; join several with ``---``
(``documents``). A test whose point is the policy's own shape keeps its YAML
inline; these are the ones that only set the scene.
"""

from __future__ import annotations


def deny_path(path: str = "/admin", *more: str, name: str = "deny-admin",
              namespace: str = "default") -> str:
    """DENY every request to ``path`` (and ``more`` paths; exact, or a ``*`` prefix/suffix
    as Istio matches), allow the rest: the smallest policy whose answer a request can
    flip (403 / 200)."""
    paths = ", ".join(f'"{p}"' for p in (path, *more))
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  action: DENY
  rules:
  - to:
    - operation: {{paths: [{paths}]}}
"""


def require_jwt(*, name: str = "require-jwt", namespace: str = "default") -> str:
    """DENY every request without a valid token (``notRequestPrincipals: ["*"]``):
    Istio's way to make a RequestAuthentication's token mandatory."""
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  action: DENY
  rules:
  - from:
    - source: {{notRequestPrincipals: ["*"]}}
"""


def documents(*resources: str) -> str:
    """Resources as one multi-document YAML file."""
    return "---\n".join(resources)
