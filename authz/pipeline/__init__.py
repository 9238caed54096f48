"""The step that decides: authentication, then authorization, then a ``Decision``,
over one immutable policy snapshot. The only module that composes the engines
(``authz.authn``, ``authz.rbac``); adapters call ``Snapshot.evaluate`` and nothing
below this package imports it."""
