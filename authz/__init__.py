"""authz: an Envoy ext_authz v3 server with Istio's RequestAuthentication and
AuthorizationPolicy semantics."""

__all__ = ["__version__"]

__version__ = "0.1.0"
