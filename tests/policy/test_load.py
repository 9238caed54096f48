from __future__ import annotations

from pathlib import Path

import pytest

from authz.policy.errors import PolicyErrors
from authz.policy.load import load_paths, parse_text, policy_files

DOCS = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: shop
spec:
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
---
# a comment-only document is skipped
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm}
"""


def test_multi_document_and_list_with_lines() -> None:
    res = parse_text(DOCS, "p.yaml", default_namespace="dflt")
    assert [r.ref for r in res] == ["AuthorizationPolicy shop/require-jwt", "ConfigMap dflt/cm"]
    ap = res[0]
    assert ap.spec["action"] == "DENY"
    assert str(ap.location) == "p.yaml:1"
    assert ap.where("spec.rules[0].from[0].source.notRequestPrincipals").line == 11
    assert ap.where("spec.rules[0].from[0].source.unknown").line == 11  # closest parent
    assert res[1].location.line == 18
    err = ap.error("spec.action", "bad action")
    assert str(err) == "p.yaml:7: AuthorizationPolicy shop/require-jwt: spec.action: bad action"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: [\n", 2, "invalid YAML"),
        ("kind: X\nmetadata: {name: n}\n", 1, "apiVersion"),
        ("- a\n- b\n", 1, "mapping"),
        ("apiVersion: v1\nmetadata: {name: n}\n", 1, "kind"),
        ("apiVersion: v1\nkind: X\n", 1, "metadata.name"),
        ("---\nfoo\n", 2, "mapping"),
        ("apiVersion: v1\nkind: X\nmetadata: {name: n}\nspec: [1]\n", 1, "spec"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, message: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(PolicyErrors) as info:
        load_paths([f])
    (err,) = info.value.errors
    assert err.location is not None
    assert (err.location.file, err.location.line) == (str(f), line)
    assert message in str(err)


def test_every_bad_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: [\n")
    (tmp_path / "b.yml").write_text("kind: X\n")
    (tmp_path / "ok.json").write_text(
        '{"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}}'
    )
    with pytest.raises(PolicyErrors) as info:
        load_paths([tmp_path])
    assert sorted(Path(e.location.file).name for e in info.value.errors if e.location) == [
        "a.yaml", "b.yml"]


def test_directories_recurse_and_skip_configmap_internals(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as ..<ts>/ files, a ..data link and visible links.
    real = tmp_path / "..2026_11_23"
    real.mkdir()
    (real / "p.yaml").write_text("apiVersion: v1\nkind: X\nmetadata: {name: n}\n")
    (tmp_path / "..data").symlink_to(real.name)
    (tmp_path / "p.yaml").symlink_to("..data/p.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "q.yml").write_text("apiVersion: v1\nkind: Y\nmetadata: {name: m}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    files = policy_files([tmp_path])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["p.yaml", "sub/q.yml"]
    assert len(load_paths([tmp_path])) == 2


def test_documents_that_are_not_kubernetes_objects_are_skipped() -> None:
    text = "static_resources: {}\n---\napiVersion: v1\nkind: X\nmetadata: {name: n}\n"
    assert [r.kind for r in parse_text(text, "f.yaml")] == ["X"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyErrors, match="does not exist"):
        load_paths([tmp_path / "nope"])


def test_list_items_and_later_documents_know_their_lines() -> None:
    res = parse_text(DOCS + "---\n" + DOCS, "p.yaml")
    assert [r.location.line for r in res] == [1, 18, 22, 39]
    assert res[1].where("metadata.name").line == 20
    assert res[2].where("spec.rules[0].from[0].source.notRequestPrincipals").line == 32
    assert res[3].where("metadata.name").line == 41


def test_line_maps_are_built_only_when_an_error_needs_them() -> None:
    from authz.policy.load import LineMap

    res = parse_text(DOCS, "p.yaml")[0]
    assert isinstance(res.lines, LineMap)
    assert res.lines._lines is None  # nothing kept per field until asked
    assert res.where("spec.action").line == 7
    assert res.lines._lines is not None


def test_parsing_keeps_no_yaml_nodes_alive() -> None:
    """A shared YAML constructor memoizes every node it builds; it once kept each
    policy's node tree (12 KB a policy) alive for the life of the process."""
    import gc

    import yaml

    for _ in range(3):
        parse_text(DOCS * 1, "p.yaml")
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, yaml.Node)]


@pytest.mark.parametrize("text", ["", "   \n\t\n"], ids=["zero-bytes", "whitespace"])
def test_an_emptied_file_is_an_error_not_a_file_without_policies(
    text: str, tmp_path: Path
) -> None:
    # A truncating editor, `> file` or a half-finished copy must not read as "no
    # policies", which would allow what the file denied.
    (tmp_path / "kept.yaml").write_text(DOCS)
    (tmp_path / "emptied.yaml").write_text(text)
    with pytest.raises(PolicyErrors) as info:
        load_paths([tmp_path])
    [error] = info.value.errors
    assert error.location is not None and error.location.file.endswith("emptied.yaml")
    assert "empty" in str(error) and "delete the file" in str(error)
