"""Command-line tools beside the server: validate, keys, jwks, token, envoy-config."""
