"""The step that decides: authentication, then authorization, then a ``Decision``,
over one immutable policy snapshot. The only module that composes the engines
(``authz.authn``, ``authz.rbac``); adapters call ``Snapshot.evaluate`` and nothing
below this package imports it.

Concurrency model of the request path: one thread per worker process. Each worker
runs every ``Check`` on its event loop's thread, from the request's bytes to the
serialized answer, and each decision without an ``await`` in it: decisions never
interleave. (The one ``Check`` that awaits, a token with an unknown ``kid`` whose
keys are being fetched, does so between two whole decisions, each reading
``store.current`` once: ``Snapshot.evaluate_pending``.) So the caches a snapshot
owns (``authz.memo``: tokens, decisions, responses, scopes, peers) are plain dicts
with no lock. What another thread or task changes reaches the request path only as
one reference assignment, read once per decision: a reload compiles a new snapshot
off the loop (fresh, empty caches no ``Check`` can see yet) and swaps
``SnapshotStore.current``; the JWKS manager publishes key sets by replacing its
whole mapping (``key_generation``). Workers share nothing but the listening port.
Anything that would run a ``Check`` on another thread must take its own snapshot,
not share one's caches."""
