"""``authz validate``: parse and compile policy files the way the server does.

Prints every problem as ``file:line: resource: field: message`` and warnings for
valid-but-surprising constructs; exits 1 on any error (2 for usage), 0 otherwise,
so it fits CI pipelines and pre-commit hooks.
"""

from __future__ import annotations

import argparse
import sys

from authz.pipeline.snapshot import PolicyOptions, compile_snapshot
from authz.policy.errors import PolicyErrors
from authz.policy.lint import lint_authorization
from authz.policy.load import load_paths

__all__ = ["register", "run"]


def run(paths: list[str], root_namespace: str, default_namespace: str, strict: bool) -> int:
    try:
        resources = load_paths(paths, default_namespace)
        snapshot = compile_snapshot(resources, 1, PolicyOptions(root_namespace=root_namespace))
    except PolicyErrors as exc:
        for error in exc.errors:
            print(error)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    warnings = lint_authorization(
        snapshot.authorization_policies, snapshot.jwt_namespaces, root_namespace
    )
    for warning in warnings:
        print(warning)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(snapshot.kinds.items()) if n) \
        or "no policies"
    print(f"ok: {summary}; {len(warnings)} warning(s)", file=sys.stderr)
    return 1 if strict and warnings else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "validate",
        help="check policy files without starting the server",
        description="Parse and compile policy files exactly as 'authz serve' does. Prints "
        "file:line: resource: field: message for each error and warnings for valid but "
        "surprising policies. Exit 0 if valid, 1 on errors (or warnings with --strict).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="policy file or directory")
    parser.add_argument("--root-namespace", default="istio-system")
    parser.add_argument("--default-namespace", default="default")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    parser.set_defaults(func=lambda args: run(
        args.paths, args.root_namespace, args.default_namespace, args.strict))
