"""The shipped examples load and decide as their README says."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.envoy.request_view import view_from_check_request
from authz.pipeline.snapshot import compile_snapshot
from authz.policy.load import load_paths

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"


@pytest.mark.parametrize(
    ("namespace", "path", "status"),
    [("default", "/", 200), ("default", "/admin", 403), ("shop", "/admin/x", 403),
     ("default", "/api/orders", 403), ("shop", "/api/orders", 200)],
)
def test_example_policies(namespace: str, path: str, status: int) -> None:
    snapshot = compile_snapshot(load_paths([EXAMPLES]), version=1)
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.method = "GET"
    req.attributes.request.http.path = path
    req.attributes.context_extensions["namespace"] = namespace
    assert snapshot.evaluate(view_from_check_request(req, "default"), 0).status == status


def test_files_the_examples_mention_exist() -> None:
    import re

    root = EXAMPLES.parents[1]
    for example in sorted(EXAMPLES.parent.rglob("*")):
        if not example.is_file():
            continue
        for mentioned in re.findall(r"\bexamples/[\w./-]*\w", example.read_text()):
            assert (root / mentioned).exists(), f"{example.name} mentions missing {mentioned}"
