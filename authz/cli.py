"""Command line: argument parsing and sub-commands only.

Every ``serve`` flag can also come from an ``AUTHZ_*`` environment variable
(flag wins). ``AUTHZ_POLICY`` holds one or more paths separated by ``:``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from authz import __version__, eventloop
from authz.config import EVENT_LOOPS, ConfigError, Settings, parse_workers
from authz.errors import AuthzError
from authz.observe import LOG_LEVELS, configure_logging
from authz.tools import check, commands, envoy_config, testsuite, validate

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "Option",
    "build_parser",
    "main",
    "serve_command",
    "settings_from_args",
]


@dataclass(frozen=True)
class Option:
    flag: str
    dest: str
    help: str
    default: Any = None
    type: Any = str
    choices: Sequence[str] | None = None
    repeat: bool = False
    metavar: str | None = None
    switch: bool = False
    """A flag without a value (on when given); its env twin takes true/false, 1/0."""

    @property
    def env(self) -> str:
        return "AUTHZ_" + self.dest.upper()


SERVE_OPTIONS = (
    Option("--policy", "policy", "policy file or directory of Kubernetes-style YAML/JSON "
           "(repeatable)", repeat=True, metavar="PATH"),
    Option("--grpc-address", "grpc_address", "gRPC listen address (Check, health, reflection)",
           "0.0.0.0:9000"),
    Option("--http-check-address", "http_check_address", "HTTP authorization listen address "
           "for the front doors /envoy (Envoy http_service, Istio envoyExtAuthzHttp), /nginx "
           "(auth_request, ingress-nginx auth-url) and /traefik (forwardAuth); empty disables "
           "it (docs/http-front-door.md)", ""),
    Option("--http-address", "http_address", "admin HTTP address for /healthz /readyz /metrics; "
           "keep it on loopback unless a scraper needs it; empty disables it", "127.0.0.1:9090"),
    Option("--root-namespace", "root_namespace", "Istio root namespace: its policies apply "
           "to every namespace", "istio-system"),
    Option("--default-namespace", "default_namespace", "namespace of requests whose route names "
           "none and whose destination has no SPIFFE identity", "default"),
    Option("--trust-domain", "trust_domain", "mesh trust domain (meshConfig trustDomain)",
           "cluster.local"),
    Option("--trust-domain-alias", "trust_domain_alias", "another trust domain whose "
           "principals count as ours (meshConfig trustDomainAliases; repeatable)",
           repeat=True, metavar="DOMAIN"),
    Option("--xff-num-trusted-hops", "xff_num_trusted_hops", "trusted proxies in front of "
           "Envoy; must equal the listener's xff_num_trusted_hops (remoteIpBlocks, remote.ip)",
           0, int),
    Option("--jwks-refresh-interval", "jwks_refresh_interval", "seconds between JWKS "
           "refreshes (a shorter Cache-Control max-age wins, down to 30 s)", 1200.0, float),
    Option("--jwks-refetch-interval", "jwks_refetch_interval", "a token with an unknown kid "
           "refetches its JWKS at most once per this many seconds", 2.0, float),
    Option("--jwks-refetch-wait", "jwks_refetch_wait", "seconds a request whose token has "
           "an unknown kid may wait for the JWKS fetch in flight before it is decided "
           "again; 0 answers at once", 0.5, float),
    Option("--jwks-ca-file", "jwks_ca_file", "CA bundle for HTTPS JWKS and OIDC discovery "
           "(default: the system's)"),
    Option("--watch-interval", "watch_interval", "seconds between checks of the policy files "
           "for changes (SIGHUP also reloads); 0 disables watching", 0.5, float),
    Option("--watch-settle", "watch_settle", "seconds the policy files must stay unchanged "
           "before a reload reads them (a read during which they change is retried)", 1.0,
           float),
    Option("--decision-log", "decision_log", "which decisions get a log line: all, deny, "
           "sample (denies plus --decision-log-sample-rate of allows), none", "all",
           choices=("all", "deny", "sample", "none")),
    Option("--decision-log-sample-rate", "decision_log_sample_rate", "fraction of allows "
           "logged with --decision-log sample", 0.01, float),
    Option("--decision-log-header", "decision_log_header", "request header to include in "
           "decision lines (repeatable; a header any rule reads tokens from, and JWT-shaped "
           "text in any header, appear as a [sha256:...] fingerprint; cookie and other "
           "sensitive headers as [redacted])", repeat=True, metavar="NAME"),
    Option("--redact-header", "redact_header", "another header to redact in logs (repeatable)",
           repeat=True, metavar="NAME"),
    Option("--otel-endpoint", "otel_endpoint", "OTLP/gRPC collector (e.g. "
           "http://otel-collector:4317) for one span per Check, parented on the request's "
           "traceparent/B3; needs pip install 'authz[otel]'; off by default"),
    Option("--log-format", "log_format", "log output: json, console, or auto (console on a "
           "terminal)", "auto", choices=("auto", "json", "console")),
    Option("--log-level", "log_level", "minimum log level", "info", choices=LOG_LEVELS),
    Option("--grace-period", "grace_period", "seconds in-flight Checks get to finish on "
           "SIGTERM", 10.0, float),
    Option("--drain-delay", "drain_delay", "seconds to keep answering after SIGTERM while "
           "health reports NOT_SERVING, so callers move away before the listener closes; "
           "ends early once polling health checkers were told and no Check arrived for 100 ms",
           5.0, float),
    Option("--workers", "workers", "server processes sharing the gRPC port (SO_REUSEPORT, "
           "Linux) under one supervisor that handles signals, restarts crashed workers and "
           "serves the admin port with merged metrics; auto = CPUs available (affinity and "
           "cgroup quota)", "auto", parse_workers, metavar="N|auto"),
    Option("--event-loop", "event_loop", "event loop: uvloop (faster under load), asyncio, "
           "or auto (uvloop when installed)", "auto", choices=EVENT_LOOPS),
    # -- TLS on the check listeners (docs/tls.md) --
    Option("--tls-cert", "tls_cert", "PEM certificate chain for the gRPC port and the HTTP "
           "check port; with --tls-key they speak TLS 1.2/1.3 only; reloaded when the file "
           "changes",
           metavar="PATH"),
    Option("--tls-key", "tls_key", "PEM private key of --tls-cert (unencrypted)",
           metavar="PATH"),
    Option("--tls-client-ca", "tls_client_ca", "PEM CA bundle: require mutual TLS, clients "
           "must present a certificate it signed; reloaded when the file changes",
           metavar="PATH"),
    Option("--enable-debug-endpoints", "enable_debug_endpoints", "serve POST /debug/explain on "
           "the admin port: why a described request gets its answer (off by default; the "
           "admin port stays on loopback)", False, switch=True),
    # Cache sizes, per worker; 0 turns a cache off (docs/operations.md, Sizing).
    Option("--token-cache-size", "token_cache_size", "signature-verified tokens kept per "
           "worker (0: verify every token)", 10_000, int, metavar="N"),
    Option("--rejected-token-cache-size", "rejected_token_cache_size", "tokens whose "
           "signature failed, kept apart so a repeated forgery costs no RSA check",
           1_000, int, metavar="N"),
    Option("--decision-cache-size", "decision_cache_size", "decisions of repeated requests "
           "kept per worker, each with its serialized response (0: decide every request)",
           12_500, int, metavar="N"),
    Option("--scope-cache-size", "scope_cache_size", "scopes (route, labels) whose "
           "applicable rules, policies and parsed form are kept", 4_096, int, metavar="N"),
)


def _typed(opt: Option) -> Any:
    if opt.type is str:
        return str

    def convert(text: str) -> Any:
        try:
            return opt.type(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            detail = f": {exc}" if isinstance(exc, argparse.ArgumentTypeError | ConfigError) else ""
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r} (from {opt.flag} or {opt.env}){detail}") from None

    convert.__name__ = getattr(opt.type, "__name__", "value")
    return convert


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for opt in options:
        env_value = os.environ.get(opt.env)
        help_text = f"{opt.help} [env {opt.env}"
        if opt.switch:
            parser.add_argument(opt.flag, dest=opt.dest, nargs=0, action=_Switch,
                                default=env_value if env_value is not None else opt.default,
                                help=help_text + "]")
            continue
        if opt.repeat:
            default: Any = env_value.split(os.pathsep) if env_value else []
            parser.add_argument(opt.flag, dest=opt.dest, action="append", default=None,
                                metavar=opt.metavar, help=help_text + "]")
            parser.set_defaults(**{f"{opt.dest}_env": default})
            continue
        if opt.default not in (None, ""):
            help_text += f", default {opt.default}"
        # A string default goes through ``type`` when (and only when) ``serve`` is
        # parsed, so a bad variable is a usage error naming both spellings.
        default = env_value if env_value is not None else opt.default
        parser.add_argument(opt.flag, dest=opt.dest, default=default, type=_typed(opt),
                            choices=opt.choices, metavar=opt.metavar, help=help_text + "]")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _switch(args: argparse.Namespace, dest: str) -> bool:
    """A switch's value: True when the flag was given, else its env twin's, parsed here
    (inside the command, so a bad variable is one usage-error line)."""
    value = getattr(args, dest)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise ConfigError(f"AUTHZ_{dest.upper()}={value!r}: expected true or false")
    return text in _TRUE


class _Switch(argparse.Action):
    """``--flag`` sets True (the env twin may have set the default)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)


EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a command whose reader went away
(``yes | head -1``), so ``set -o pipefail`` scripts see what they see for any tool."""


EXIT_INTERRUPTED = 130
"""128 + SIGINT: a tool stopped by Ctrl-C, as the shell reports it."""

EPILOG = f"""\
Run 'authz serve --help' for the server's options.

exit status:
  0    success; 'check': allowed; 'token inspect --policy': accepted
  1    a problem the message names (a file, a key, a port in use, a missing extra);
       'check': denied; 'token inspect --policy': rejected; 'validate': policy
       errors (or warnings with --strict)
  2    a bad argument or environment variable; 'serve', 'check': policies rejected
  {EXIT_BROKEN_PIPE}  stdout closed by its reader ('authz check ... | head -0'): nothing more
       is printed, and the status is what a shell reports for a command SIGPIPE ended
  {EXIT_INTERRUPTED}  a tool stopped by Ctrl-C (SIGINT); 'serve' drains and exits 0 instead
Errors are one line on stderr ('authz: error: ...'), never a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one ``authz: error: ...`` line like every other
    error (argparse prints the whole usage first); sub-commands inherit it."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("authz").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"authz: error: {where}{message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="authz",
        description="Envoy ext_authz v3 server that enforces Istio RequestAuthentication and\n"
        "AuthorizationPolicy resources, per route.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"authz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the gRPC ext_authz server",
        description="Serve envoy.service.auth.v3.Authorization/Check, grpc.health.v1.Health and "
        "gRPC reflection; admin HTTP on --http-address. SIGTERM drains and exits 0.",
    )
    _add_options(serve, SERVE_OPTIONS)
    serve.set_defaults(func=lambda args: serve_command(settings_from_args(args)))
    validate.register(sub)
    check.register(sub)
    testsuite.register(sub)
    envoy_config.register(sub)
    commands.register(sub)
    return parser


def _repeated(args: argparse.Namespace, dest: str) -> list[str]:
    """A repeatable flag's values, else its env twin's (``:``-separated)."""
    given = getattr(args, dest)
    values: list[str] = given if given is not None else getattr(args, f"{dest}_env")
    return [v for v in values if v]


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        policy_paths=tuple(_repeated(args, "policy")),
        grpc_address=args.grpc_address,
        http_address=args.http_address,
        http_check_address=args.http_check_address,
        root_namespace=args.root_namespace,
        default_namespace=args.default_namespace,
        trust_domain=args.trust_domain,
        trust_domain_aliases=tuple(_repeated(args, "trust_domain_alias")),
        xff_num_trusted_hops=args.xff_num_trusted_hops,
        log_format=args.log_format,
        log_level=args.log_level,
        grace_period=args.grace_period,
        watch_interval=args.watch_interval,
        watch_settle=args.watch_settle,
        jwks_refresh_interval=args.jwks_refresh_interval,
        jwks_refetch_interval=args.jwks_refetch_interval,
        jwks_refetch_wait=args.jwks_refetch_wait,
        jwks_ca_file=args.jwks_ca_file or None,
        otel_endpoint=args.otel_endpoint or None,
        decision_log=args.decision_log,
        decision_log_sample_rate=args.decision_log_sample_rate,
        decision_log_headers=tuple(_repeated(args, "decision_log_header")),
        redact_headers=tuple(_repeated(args, "redact_header")),
        drain_delay=args.drain_delay,
        workers=args.workers,
        event_loop=args.event_loop,
        tls_cert=args.tls_cert or None,
        tls_key=args.tls_key or None,
        tls_client_ca=args.tls_client_ca or None,
        token_cache_size=args.token_cache_size,
        rejected_token_cache_size=args.rejected_token_cache_size,
        decision_cache_size=args.decision_cache_size,
        scope_cache_size=args.scope_cache_size,
        enable_debug_endpoints=_switch(args, "enable_debug_endpoints"),
    )


def serve_command(settings: Settings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        from authz.workers import Supervisor

        eventloop.loop_factory(settings.event_loop)  # a missing uvloop fails here, once
        # The workers run on the chosen loop; the supervisor carries no Check and
        # reads their abstract-namespace admin sockets, which uvloop cannot connect to.
        return eventloop.run(Supervisor(settings).serve, "asyncio")
    from authz.server import run_server

    return run_server(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and map every outcome to the exit status (docs/cli.md):
    0 success (allow), 1 a problem the user can fix (deny, a file, a port), 2 a bad
    argument or policy, 130 Ctrl-C, 141 stdout closed by its reader. Errors are one
    ``authz: error: ...`` line on stderr, never a traceback."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # Python's advice (library/signal.html, "Note on SIGPIPE"): point stdout at
        # devnull so the interpreter's last flush does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl-C in a tool (serve handles SIGINT itself: drains, 0)
        return EXIT_INTERRUPTED


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        sys.stdout.flush()  # --help into a closed pipe fails here, inside main
        raise
    if args.command is None:
        parser.print_help()
        code = 2
    else:
        try:
            code = args.func(args)
        except AuthzError as exc:
            print(f"authz: error: {exc}", file=sys.stderr)
            code = exc.exit_code
    sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    return code


if __name__ == "__main__":
    sys.exit(main())
