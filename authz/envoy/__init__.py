"""The gRPC adapter: Envoy's ``CheckRequest`` in (to a ``RequestView``) and a
``Decision`` out (to a ``CheckResponse``). The only place that touches the
ext_authz protobuf messages."""
