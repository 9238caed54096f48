"""RequestAuthentication: token extraction, JWKS, verification and the request-path engine.

Import the engine from ``authz.authn.engine`` and the JWKS manager from
``authz.authn.jwks``; nothing here does I/O on import.
"""
