"""What the test suite and the benchmark share: loopback ports, Envoy bootstraps that put
authz (or Envoy's own jwt_authn) in front of a listener, Istio's jwt_authn translation, and
nginx (``auth_request``) and Traefik (``forwardAuth``) configurations in front of authz's
HTTP listener.

Never imported by the server: only tests/, bench/ and examples/demo.py use it, so all run
against one definition of the rig instead of reaching into the tests.
"""
