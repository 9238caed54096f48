"""What the test suite and the benchmark share: loopback ports, Envoy bootstraps that put
authz (or Envoy's own jwt_authn) in front of a listener, and Istio's jwt_authn translation.

Never imported by the server: only tests/ and bench/ use it, so both run against one
definition of the rig instead of the benchmark reaching into the tests.
"""
