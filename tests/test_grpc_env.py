"""gRPC core's environment, set before grpc is imported (authz/grpc_env.py)."""

from __future__ import annotations

import subprocess
import sys

from authz import grpc_env


def test_apply_sets_what_the_environment_does_not() -> None:
    environ: dict[str, str] = {}
    assert grpc_env.apply(environ) == {"GRPC_EXPERIMENTS": "-event_engine_listener"}
    assert environ == {"GRPC_EXPERIMENTS": "-event_engine_listener"}


def test_a_value_already_set_wins_even_empty() -> None:
    for mine in ("event_engine_dns", ""):
        environ = {"GRPC_EXPERIMENTS": mine, "OTHER": "x"}
        assert grpc_env.apply(environ) == {"GRPC_EXPERIMENTS": mine}
        assert environ == {"GRPC_EXPERIMENTS": mine, "OTHER": "x"}


def test_the_entry_point_sets_it_before_anything_imports_grpc() -> None:
    """gRPC reads GRPC_EXPERIMENTS once, at import: the ``authz`` command must call
    ``apply`` before grpc is imported. (That a served process has it: test_cli.py.)"""
    probe = (
        "import os, sys\n"
        "os.environ.pop('GRPC_EXPERIMENTS', None)\n"
        "from authz import grpc_env\n"
        "real, seen = grpc_env.apply, []\n"
        "grpc_env.apply = lambda: seen.append('grpc' in sys.modules) or real()\n"
        "import authz.__main__ as entry\n"
        "sys.argv = ['authz', '--version']\n"
        "try:\n"
        "    entry.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(seen, os.environ.get('GRPC_EXPERIMENTS'))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.splitlines()[-1].split() == ["[False]", "-event_engine_listener"]
