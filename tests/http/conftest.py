"""Fixtures of tests/server (an in-process server) and tests/e2e (real processes and
Envoy), for the HTTP front door's tests."""

from tests.e2e.conftest import echo_upstream, start_authz, start_envoy
from tests.server.conftest import jwks_policy, start_server

__all__ = ["echo_upstream", "jwks_policy", "start_authz", "start_envoy", "start_server"]
