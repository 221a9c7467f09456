"""``gateway serve`` and ``gateway validate``: run the gateway, or check policy files without running it."""

from __future__ import annotations

import argparse
import logging
import os

from gateway.cli.common import add_log_format, load_or_report
from gateway.http.runner import run_worker, run_workers
from gateway.observability import applog
from gateway.policy.bundled import DEMO_KEY, QUICKSTART, bundled_policy, is_bundled
from gateway.policy.model import Policy

REDIS_PING_S = 1.0
log = logging.getLogger("gateway.serve")


def redis_problem(policy: Policy, timeout_s: float = REDIS_PING_S) -> str | None:
    """Why the policy's Redis does not answer a PING within ``timeout_s``; None when it does (or no Redis).

    Only a warning: the gateway serves anyway, with ``state.on_backend_error`` deciding what requests get.
    """
    if policy.state.backend != "redis":
        return None
    import redis

    url = policy.state.redis_url
    try:
        client = redis.Redis.from_url(url)
        # bounded whatever the URL's own timeouts say (a cluster seed node answers PING like any Redis)
        client.connection_pool.connection_kwargs.update(socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return (f"Redis at {_safe_url(url)} does not answer ({type(exc).__name__}: {exc}); serving anyway, "
                f"state.on_backend_error: {policy.state.on_backend_error} applies until it does")
    return None


def _safe_url(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url


def banner(policy: Policy, host: str, port: int, workers: int, warnings: tuple[str, ...] = ()) -> str:
    lines = [
        f"LLM gateway listening on http://{host}:{port}/v1 ({workers} worker{'s' if workers > 1 else ''})",
        f"  policy: {policy.source} (sha256 {policy.digest[:12]}), state: {policy.state.backend}",
        f"  models: {', '.join(sorted({m.name for m in policy.models.values()}))}",
    ]
    if is_bundled(policy.source):
        lines.append(f"  demo tenant key: {DEMO_KEY}")
        lines.append(
            f"  try: curl http://{host}:{port}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' "
            "-H 'Content-Type: application/json' -d '{\"model\":\"demo\",\"messages\":[{\"role\":\"user\","
            "\"content\":\"hello\"}]}'"
        )
    lines += [f"  WARNING: {w}" for w in warnings]
    return "\n".join(lines)


def configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", help=f"policy file (default: the bundled {QUICKSTART})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no start-up banner")
    add_log_format(parser, "application logs: text or json lines on stderr (default: $GATEWAY_LOG_FORMAT or text)",
                   default=argparse.SUPPRESS)  # also accepted before the command: gateway --log-format json serve


def serve(args: argparse.Namespace) -> int:
    path = args.policy or str(bundled_policy())
    policy = load_or_report(path)
    if policy is None:
        return 1
    for warning in policy.warnings:
        logging.getLogger("gateway.policy").warning("%s", warning)
    problem = None if args.reuse_port else redis_problem(policy)  # worker children leave it to the supervisor
    if problem is not None:
        log.warning("%s", problem)
    shown = (problem,) if problem else ()
    if args.workers > 1:
        os.environ[applog.ENV] = applog.log_format(args.log_format)  # the workers log the same way
        print(banner(policy, args.host, args.port, args.workers, shown), flush=True)
        return run_workers(path, args.host, args.port, args.workers)
    if not args.quiet:
        print(banner(policy, args.host, args.port, 1, shown), flush=True)
    run_worker(policy, path, args.host, args.port, args.reuse_port)
    return 0


def configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+")


def validate(args: argparse.Namespace) -> int:
    from gateway.policy.check import main_validate

    return main_validate(args.files)
