"""The RequestAuthentication engine: which rules apply to a scope, token
extraction, JWKS keys (fetched and refreshed by the manager in ``jwks``),
verification with jwt_verify_lib's checks, and Istio's rule combination.
Reads the policy models and the request view; nothing here does I/O on import."""
