"""Istio AuthorizationPolicy evaluation: matchers, compiled rules and the engine.

Import from the submodules (``authz.rbac.engine``, ``authz.rbac.context``);
this package imports nothing itself so ``authz.policy.authorization`` can use
the matchers without an import cycle.
"""
