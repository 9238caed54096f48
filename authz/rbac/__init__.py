"""The AuthorizationPolicy engine: compiled matchers and rules, and the
DENY -> ALLOW -> AUDIT evaluation Istio's RBAC filters perform. Reads the policy
models and the request view; knows nothing of tokens (it gets verified claims)."""
