"""Decision -> HTTP answer: what each front door's proxy makes of it.

The answer carries what the gRPC ``CheckResponse`` carries, in the form the proxy
reads (docs/http-front-door.md):

- allow: **200** (Envoy treats only 200 as OK; nginx and Traefik any 2xx) with the
  headers to add upstream (``outputClaimToHeaders``, ``outputPayloadToHeader``);
  for Envoy also ``x-envoy-auth-headers-to-remove`` naming the token's header and
  the claim headers a client may have sent, which Envoy then strips upstream;
- deny: the decision's status (401 or 403), body and ``www-authenticate``: Envoy
  passes them to the client as the gRPC path's ``DeniedHttpResponse`` does, Traefik
  passes the body too, nginx keeps the status and ``WWW-Authenticate`` and shows its
  own error page. So ``/nginx`` denies carry no body: nginx never reads an auth
  subrequest's body, and an unread body makes it close the connection (measured:
  a connection per deny, and with TLS a handshake per deny).

No ``content-type`` on a deny: Envoy gives its local reply its own, as it does for
the gRPC path's denial.

nginx and Traefik cannot remove a header: a user who wants the token removed upstream
lists its header (``Authorization``) among those the proxy copies from the answer, and
both proxies then drop or blank a listed header the answer lacks. So an nginx or
Traefik allow also echoes each token-location header the request carried that the
decision keeps (``echoed``): the proxy copies it upstream unchanged, as Envoy keeps it.
The echo differs per request, so it is appended to the memoized answer per request
(``with_echo``), never part of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from authz.authn.engine import header_value_ok
from authz.decision import Decision
from authz.http.frontdoors import Door
from authz.http.protocol import HttpResponse, with_headers

__all__ = ["HEADERS_TO_REMOVE", "echoed", "render", "with_echo"]

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
        b"" if door is Door.NGINX else decision.body.encode())


def echoed(decision: Decision, headers: Mapping[str, str], token_headers: Iterable[str]
           ) -> tuple[tuple[str, str], ...]:
    """The token-location headers (``token_headers``) the request carried (``headers``,
    the view's) that an allow keeps: neither removed nor set by the decision. Over
    gRPC Envoy keeps them upstream (a Basic credential, a CORS preflight,
    ``forwardOriginalToken: true``); nginx and Traefik keep them only if the answer
    carries them. A value that cannot be sent as it is (a control character) is not
    echoed: no header injection, whatever the parser let through."""
    if not decision.allowed:
        return ()
    out = []
    for name in token_headers:
        value = headers.get(name)
        if value is None or name in decision.upstream_headers_to_remove:
            continue
        if decision.upstream_headers and any(
                h.name == name for h in decision.upstream_headers):
            continue
        if header_value_ok(value):
            out.append((name, value))
    return tuple(out)


def with_echo(response: HttpResponse, echo: tuple[tuple[str, str], ...]) -> HttpResponse:
    """A (memoized) nginx or Traefik answer with this request's ``echoed`` headers."""
    return with_headers(response, echo) if echo else response
