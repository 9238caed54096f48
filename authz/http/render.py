"""Decision -> HTTP answer: what each front door's proxy makes of it.

The answer carries what the gRPC ``CheckResponse`` carries, in the form the proxy
reads (docs/http-front-door.md):

- allow: **200** (Envoy treats only 200 as OK; nginx and Traefik any 2xx) with the
  headers to add upstream (``outputClaimToHeaders``, ``outputPayloadToHeader``);
  for Envoy also ``x-envoy-auth-headers-to-remove`` naming the token's header and
  the claim headers a client may have sent, which Envoy then strips upstream;
- deny: the decision's status (401 or 403), body and ``www-authenticate``: Envoy
  passes them to the client as the gRPC path's ``DeniedHttpResponse`` does, nginx
  keeps the status and ``WWW-Authenticate``, Traefik passes the body too.

No ``content-type`` on a deny: Envoy gives its local reply its own, as it does for
the gRPC path's denial.
"""

from __future__ import annotations

from authz.decision import Decision
from authz.http.frontdoors import Door
from authz.http.protocol import HttpResponse

__all__ = ["HEADERS_TO_REMOVE", "render"]

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"


def render(decision: Decision, door: Door) -> HttpResponse:
    if decision.allowed:
        headers = [(h.name, h.value) for h in decision.upstream_headers]
        if door is Door.ENVOY and decision.upstream_headers_to_remove:
            headers.append((HEADERS_TO_REMOVE, ",".join(decision.upstream_headers_to_remove)))
        headers.extend((h.name, h.value) for h in decision.response_headers)
        return HttpResponse(200, tuple(headers))
    return HttpResponse(
        decision.status, tuple((h.name, h.value) for h in decision.response_headers),
        decision.body.encode())
