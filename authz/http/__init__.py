"""The HTTP adapter: the front doors for Envoy ``http_service`` (``/envoy``), nginx
``auth_request`` (``/nginx``) and Traefik ``forwardAuth`` (``/traefik``). A check
request in (to a ``RequestView``, ``frontdoors``), a ``Decision`` out (``render``),
over a small HTTP/1.1 protocol (``protocol``, ``listener``). The server wires it to
the same snapshot as the gRPC adapter (``authz.envoy``)."""
