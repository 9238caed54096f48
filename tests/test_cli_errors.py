"""Every way a command fails ends in one line on stderr and a documented exit status.

``authz.cli.main`` maps errors to exit codes in one place (docs/cli.md, "Exit
status"): an ``AuthzError`` is one ``authz: error: ...`` line and its
``exit_code``, a reader that closed stdout is a silent 141. These are the edges
that used to end in a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from authz.cli import EXIT_BROKEN_PIPE, main
from authz.errors import MissingExtraError
from authz.tracing import Tracing

ROOT = Path(__file__).resolve().parents[1]
POLICIES = str(ROOT / "examples" / "policies")
UNSIGNED = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."  # header.payload. of an alg=none token


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("authz: error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv", [
    ["check", "--policy", POLICIES, "--url", "http://api.local/", "--labels", "app"],
    ["token", "inspect", UNSIGNED, "--policy", POLICIES, "--labels", "app"],
])
def test_bad_labels_are_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == "authz: error: --labels: label 'app' is not of the form key=value"


def test_bad_route_labels_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envoy-config", "--upstream-address", "127.0.0.1:8080",
                 "--route", "/a=ns:app"]) == 2
    assert "--route '/a=ns:app': label 'app'" in capsys.readouterr().err


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_envoy_config_without_its_extra_names_the_extra(
        transport: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # None in sys.modules makes the import fail as if envoy-data-plane were not installed.
    monkeypatch.setitem(sys.modules, "envoy_data_plane", None)
    assert main(["envoy-config", "--upstream-address", "127.0.0.1:8080",
                 "--transport", transport]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert one_error_line(out.err) == (
        "authz: error: authz envoy-config needs the optional 'envoy-config' extra (module "
        "envoy_data_plane is missing): pip install 'authz[envoy-config]'")


def test_otel_endpoint_without_its_extra_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                        None)
    with pytest.raises(MissingExtraError, match=r"pip install 'authz\[otel\]'") as info:
        Tracing("http://127.0.0.1:4317")
    assert info.value.extra == "otel" and info.value.exit_code == 1


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``authz ARGS`` with stdout a pipe whose reader has gone (``| head -0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "authz", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path_factory.mktemp("key") / "key.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(path)


@pytest.mark.parametrize("args", [
    ("check", "--policy", POLICIES, "--url", "http://api.local/", "--output", "json"),
    ("check", "--policy", POLICIES, "--url", "http://api.local/"),
    ("token", "inspect", UNSIGNED),
    ("token", "mint", "--key", "{key}", "--iss", "https://issuer.example", "--sub", "a"),
    ("jwks", "from-pem", "{key}"),
    ("envoy-config", "--upstream-address", "127.0.0.1:8080", "--transport", "grpc"),
    ("envoy-config", "--upstream-address", "127.0.0.1:8080", "--transport", "http"),
    ("test", "--output", "json", str(ROOT / "examples" / "tutorial")),
    ("test", str(ROOT / "examples" / "tutorial")),
    ("validate", POLICIES),
], ids=["check-json", "check-text", "token-inspect", "token-mint", "jwks-from-pem",
        "envoy-config-grpc", "envoy-config-http", "test-json", "test-text", "validate"])
def test_a_closed_stdout_is_a_silent_141(args: tuple[str, ...], key_file: str) -> None:
    done = run_into_closed_pipe(*(arg.format(key=key_file) for arg in args))
    assert (done.returncode, done.stderr) == (EXIT_BROKEN_PIPE, "")


def non_json_lines(err: str) -> list[str]:
    out = []
    for line in err.splitlines():
        try:
            json.loads(line)
        except ValueError:
            out.append(line)
    return out


@pytest.mark.parametrize("workers", ["1", "2", None], ids=["one", "two", "default"])
@pytest.mark.parametrize(("flag", "message"), [
    ("--grpc-address", "cannot bind gRPC address {address}: Address already in use"),
    ("--http-check-address", "cannot bind HTTP check address {address}: Address already in use"),
    ("--http-address",
     "cannot bind admin address {address} (--http-address): Address already in use"),
], ids=["grpc", "http-check", "admin"])
def test_a_port_in_use_is_one_line_and_exit_1(workers: str | None, flag: str,
                                              message: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        addresses = {"--grpc-address": "127.0.0.1:0", "--http-address": "127.0.0.1:0",
                     "--http-check-address": "", flag: taken}
        argv = [sys.executable, "-m", "authz", "serve", "--policy", POLICIES,
                "--log-format", "json", *[part for item in addresses.items() for part in item]]
        if workers is not None:
            argv += ["--workers", workers]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert non_json_lines(done.stderr) == ["authz: " + message.format(address=taken)]


def test_the_help_documents_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for code in (0, 1, 2, 130, EXIT_BROKEN_PIPE):
        assert f"\n  {code} " in text
    assert "authz: error: " in text


def test_ctrl_c_in_a_tool_is_a_quiet_130() -> None:
    import signal
    import time

    from authz.cli import EXIT_INTERRUPTED

    # "ready" once authz.cli is imported (as the authz command imports it), so the
    # signal lands in main(), which then blocks reading the token from stdin.
    script = ("import sys; from authz import grpc_env; grpc_env.apply(); "
              "from authz.cli import main; print('ready', file=sys.stderr, flush=True); "
              "sys.exit(main())")
    proc = subprocess.Popen([sys.executable, "-c", script, "token", "inspect", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stderr.readline() == "ready\n"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (EXIT_INTERRUPTED, "", "")


@pytest.mark.parametrize(("argv", "line"), [
    (["envoy-config", "--upstream-address", "127.0.0.1:8080", "--transport", "bogus"],
     "authz: error: envoy-config: argument --transport: invalid choice: 'bogus' (choose from "
     "'grpc', 'http') (see 'authz envoy-config --help')"),
    (["test", "--min-coverage", "150"],
     "authz: error: test: argument --min-coverage: must be between 0 and 100 "
     "(see 'authz test --help')"),
    (["check", "--policy", POLICIES],
     "authz: error: check: the following arguments are required: --url "
     "(see 'authz check --help')"),
    (["token"], "authz: error: token: the following arguments are required: ACTION "
     "(see 'authz token --help')"),
    (["bogus"], "authz: error: argument COMMAND: invalid choice: 'bogus' (choose from "
     "'serve', 'validate', 'check', 'test', 'envoy-config', 'keys', 'jwks', 'token') "
     "(see 'authz --help')"),
])
def test_a_bad_argument_is_one_line_not_the_usage(
        argv: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err == line + "\n"
