"""The ``atomic-guide`` command line: run the stack, mint dev tokens, inspect streams."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from shared.config import ConfigError

__all__ = ["main"]


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


# --- up ----------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from ops.datadir import DataDirLock
    from ops.natsd import record_url
    from ops.stack import ensure_secret, resolve_settings
    from ops.supervisor import NatsChild, Supervisor, say

    settings = resolve_settings(gateway_port=args.port, data_dir=args.data_dir)
    data_dir = settings.data_dir.resolve()
    lock = DataDirLock(data_dir).acquire()  # or DataDirInUse, said in one line by main()
    (data_dir / "logs").mkdir(exist_ok=True)
    env = dict(os.environ)
    if not os.environ.get("AG_JWT_SECRET"):
        secret, new = ensure_secret(data_dir)
        env["AG_JWT_SECRET"] = secret
        if new:
            say(f"AG_JWT_SECRET not set: generated a dev secret in {data_dir}/jwt_secret")
    # `up` is the development stack: the demo page on (unless AG_DEMO says otherwise), and
    # enough connections per minute for a few browser tabs of three sockets each.
    env.setdefault("AG_DEMO", "true")
    env.setdefault("AG_RATE_CONNECTIONS_PER_MINUTE", "120")
    env.update(
        AG_DATA_DIR=str(data_dir),
        AG_GATEWAY_PORT=str(settings.gateway_port),
        AG_GATEWAY_HOST=settings.gateway_host,
    )
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    keep = (lock.fd,)  # children hold the data dir lock too, until the last one exits
    nats = None
    if not os.environ.get("AG_NATS_URL"):
        nats = NatsChild(
            data_dir, settings.nats_sync_interval, data_dir / "logs" / "nats.log", keep
        )
    sup = Supervisor(env, nats=nats, keep_fds=keep, workers=args.workers)
    try:
        if nats is not None:
            sup.start(["nats"])
            assert nats.server is not None
            record_url(data_dir, nats.server.url)
            say(f"embedded nats-server {nats.server.url} (monitoring {nats.server.monitor_url})")
            env["AG_NATS_URL"] = nats.server.url
        asyncio.run(_provision(settings.replace(nats_url=env["AG_NATS_URL"])))
        backends = [n for n in sup.children if n not in ("gateway", "nats")]
        sup.start(backends)
        base = f"http://{settings.gateway_host}:{settings.gateway_port}"
        pending = set(backends)  # the gateway starts once every backend answers its probe
        ready = False
        while not stop["now"]:
            sup.poll()
            if pending:
                pending = asyncio.run(_unready(env["AG_NATS_URL"], pending))
                if not pending:
                    sup.start(["gateway"])
            elif not ready and _http_ok(base + "/readyz"):
                ready = True
                demo = _demo_links(settings, env, base)
                _banner(settings, base, data_dir, sup.metrics_ports, demo)
            time.sleep(0.2)  # supervisor poll interval
    finally:
        # Stop first, talk after: the terminal (or `tee`) may already be gone.
        say("stopping…")
        sup.stop()
        if nats is not None:
            record_url(data_dir, None)
        lock.release()
        say("stopped")
    return 0


def _demo_links(settings: Any, env: dict[str, str], base: str) -> str:
    """Two ready demo links, a learner's and an instructor's, with dev tokens in the URL
    fragment: a browser never sends the fragment, so no token reaches a server log."""
    from shared.auth import mint_token
    from shared.config import load_settings

    if load_settings(env).demo is False:
        return ""
    secret = env.get("AG_JWT_SECRET")
    if not secret or not any(a.startswith("HS") for a in settings.jwt_algorithms):
        return "Demo: /demo/ (no dev secret to mint tokens with: put ?token=… in the fragment)\n"
    keyed = settings.replace(jwt_secret=secret)
    now, ttl = time.time(), 12 * 3600
    context = "course-1"
    links = []
    for label, sub, name, role in (
        ("learner", "learner-1", "Alex Learner", "learner"),
        ("instructor", "instructor-1", "Ines Instructor", "instructor"),
    ):
        token = mint_token(
            keyed, sub=sub, name=name, contexts=[context], roles=[role], ttl=ttl, now=now
        )
        links.append(f"  {label + ':':<14} {base}/demo/#context={context}&token={token}")
    return "Open the demo (tokens valid 12 h):\n" + "\n".join(links) + "\n"


def _banner(
    settings: Any, base: str, data_dir: Path, metrics_ports: dict[str, int], demo: str = ""
) -> None:
    ws = base.replace("http://", "ws://")
    host = settings.gateway_host
    service_metrics = "  ".join(f"{n}: http://{host}:{p}/" for n, p in metrics_ports.items())
    text = f"""
Atomic Guide realtime is up.
  chat:          {ws}/api/chat/ws
  analytics:     {ws}/api/analytics/ws   (instructor/admin; POST {base}/api/analytics/events)
  collaboration: {ws}/api/collaboration/ws
  health:        {base}/healthz   ready: {base}/readyz   metrics: {base}/metrics
  service metrics: {service_metrics}
  data dir:      {data_dir}
Get a token (in another shell, same data dir):
  atomic-guide token --sub alice --name Alice --context course-1 --data-dir {data_dir}
Connect:  python -m websockets "{ws}/api/chat/ws?contextId=course-1&token=<token>"
{demo}Ctrl-C stops everything.
"""
    try:
        print(text, flush=True)
    except OSError:  # stdout is a pipe nobody reads any more; keep running
        pass


async def _unready(nats_url: str, names: set[str]) -> set[str]:
    """The services among ``names`` that do not answer their readiness probe yet."""
    from ops.supervisor import service_of
    from shared.bus.nats import NatsBus, NatsUnreachable, connect_once
    from shared.config import load_settings
    from shared.probes import service_ready

    try:
        nc = await connect_once(nats_url, "atomic-guide-up", timeout=1.0)
    except NatsUnreachable:
        return names
    bus = NatsBus(load_settings({}), nc)
    try:
        return {n for n in names if not await service_ready(bus, service_of(n), timeout=0.5)}
    finally:
        await nc.close()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except Exception:
        return False


def _url(settings: Any) -> str:
    """The NATS URL a command should use, or a clear stop when there is none."""
    from shared.bus.nats import NatsUnreachable

    if not settings.nats_url:
        where = settings.data_dir.resolve()
        raise NatsUnreachable("(none)", f"no AG_NATS_URL, and no running stack recorded in {where}")
    return str(settings.nats_url)


async def _provision(settings: Any) -> None:
    from ops.streams import ensure_streams
    from shared.bus.nats import connect_once

    nc = await connect_once(_url(settings), "atomic-guide-provision")
    try:
        await ensure_streams(
            nc.jetstream(),
            settings.stream_replicas,
            settings.dedup_window_s,
            settings.partitions,
            settings.lease_s,
        )
    finally:
        await nc.close()


def cmd_provision(args: argparse.Namespace) -> int:
    from ops.stack import resolve_settings

    settings = resolve_settings(data_dir=args.data_dir)
    asyncio.run(_provision(settings))
    print(f"streams ready on {settings.nats_url} (replicas {settings.stream_replicas})")
    return 0


# --- token -------------------------------------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    from ops.stack import resolve_settings
    from shared.auth import mint_token

    settings = resolve_settings(data_dir=args.data_dir)
    key = Path(args.private_key).read_text() if args.private_key else None
    print(
        mint_token(
            settings,
            sub=args.sub,
            name=args.name,
            contexts=args.context,
            roles=args.role or ["learner"],
            ttl=args.ttl,
            now=time.time(),
            private_key=key,
            algorithm=args.algorithm,
        )
    )
    return 0


# --- streams -----------------------------------------------------------------------------------
def cmd_streams(args: argparse.Namespace) -> int:
    from ops.stack import resolve_settings
    from ops.streams import describe_streams
    from shared.bus.nats import connect_once

    settings = resolve_settings(data_dir=args.data_dir)

    async def run() -> list[dict[str, Any]]:
        nc = await connect_once(_url(settings), "atomic-guide-cli")
        try:
            return await describe_streams(nc.jetstream())
        finally:
            await nc.close()

    rows = asyncio.run(run())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(rows, ["stream", "messages", "bytes", "first_seq", "last_seq", "replicas"])
    consumers = [{"stream": r["stream"], **c} for r in rows for c in r.get("consumers", [])]
    if consumers:
        print()
        _print_table(consumers, ["stream", "name", "pending", "ack_pending", "delivered"])
    leases = [{"lease": k, "holder": v} for r in rows for k, v in r.get("leases", {}).items()]
    if leases:
        print()
        _print_table(leases, ["lease", "holder"])
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"ops.bench.{args.target}")
    if hasattr(module, "main"):
        module.main(args.rest)
    else:
        print(json.dumps(module.run(), indent=2))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atomic-guide", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack in the foreground")
    up.add_argument("--port", type=int, help="gateway port (AG_GATEWAY_PORT)")
    up.add_argument("--data-dir", type=Path, help="data dir (AG_DATA_DIR)")
    up.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="chat and collaboration worker processes each (partitions are shared among them)",
    )
    up.set_defaults(func=cmd_up)

    tok = sub.add_parser("token", help="mint a dev JWT with the configured key")
    tok.add_argument("--sub", required=True)
    tok.add_argument("--name")
    tok.add_argument("--context", action="append", required=True, help="repeatable")
    tok.add_argument(
        "--role", action="append", choices=["learner", "instructor", "admin", "service"]
    )
    tok.add_argument("--ttl", type=float, default=3600.0, help="seconds (default 3600)")
    tok.add_argument("--private-key", help="PEM file, for RS256/ES256 tokens")
    tok.add_argument("--algorithm")
    tok.add_argument("--data-dir", type=Path)
    tok.set_defaults(func=cmd_token)

    pv = sub.add_parser("provision", help="create or update the streams (idempotent)")
    pv.add_argument("--data-dir", type=Path)
    pv.set_defaults(func=cmd_provision)

    st = sub.add_parser("streams", help="streams, consumers, message counts")
    st.add_argument("--json", action="store_true")
    st.add_argument("--data-dir", type=Path)
    st.set_defaults(func=cmd_streams)
    be = sub.add_parser(
        "bench",
        help="benchmarks: chat, chat_start, fanout, ot, collab, analytics, scale (--help each)",
    )
    be.add_argument(
        "target", choices=["chat", "chat_start", "fanout", "ot", "collab", "analytics", "scale"]
    )
    be.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    be.set_defaults(func=cmd_bench)

    from ops.analytics_cli import register as register_analytics

    register_analytics(sub)  # replay, query, export

    from ops.chat_cli import register as register_chat

    register_chat(sub)  # interactive terminal chat over the client SDK
    return p


def main(argv: list[str] | None = None) -> int:
    from ops.datadir import DataDirInUse
    from shared.bus.nats import NatsUnreachable

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"atomic-guide: {exc}", file=sys.stderr)
        return 2
    except DataDirInUse as exc:
        print(f"atomic-guide: {exc}", file=sys.stderr)
        return 1
    except NatsUnreachable as exc:  # one line, no traceback: the stack is down or the URL stale
        print(f"atomic-guide: {exc} (is `atomic-guide up` running?)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
