"""Conformance with Istio: our server against real Envoy RBAC built from Istio's goldens."""
