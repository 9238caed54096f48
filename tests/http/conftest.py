"""The in-process server fixtures of tests/server, for the HTTP listener's tests."""

from tests.server.conftest import jwks_policy, start_server

__all__ = ["jwks_policy", "start_server"]
