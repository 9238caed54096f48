"""Why a request got its answer: a second, slower walk over a compiled snapshot.

The serving path (``Snapshot.evaluate``) stops at the first rule that decides and
records nothing. This package reads the same compiled rules and token locations
and reports every step a reader would take: which jwtRules applied and what became
of each token, which policies were in scope, and for every rule the field that
decided its match. ``authz check --explain``, ``authz test`` (failing cases and
``--coverage``) and the admin port's ``POST /debug/explain`` use it; nothing on
the request path imports it.
"""
