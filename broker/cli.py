"""``mcp-broker``: serve, check-config, dev, and the protected MCP server (``mcp-app serve``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from broker.config.loader import ENV_VAR, ConfigError, config_path, load_config
from broker.config.models import BrokerConfig


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(
        f"{args.file}: OK (issuer {config.issuer}; {len(config.providers)} provider(s), "
        f"{len(config.resources)} resource(s), {len(config.mappings)} mapping rule(s))"
    )
    return 0


def _load(command: str, explicit: str | None) -> tuple[Path, BrokerConfig] | int:
    """The configuration named by ``--config`` or the environment, or the exit code after saying why not."""
    path = config_path(explicit)
    if path is None:
        print(f"mcp-broker {command}: give --config FILE or set {ENV_VAR}", file=sys.stderr)
        return 2
    try:
        return path, load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from broker.log import configure_logging

    loaded = _load("serve", args.config)
    if isinstance(loaded, int):
        return loaded
    path, config = loaded
    if config.redis.url is None:
        print(
            "mcp-broker serve: redis.url is not set; set it, or use `mcp-broker dev` for a private Redis",
            file=sys.stderr,
        )
        return 1
    configure_logging(config.logging.level, config.logging.format)
    os.environ[ENV_VAR] = str(path.resolve())
    if config.metrics.enabled:
        from broker.metrics_env import prepare

        prepare()  # before prometheus_client is imported anywhere
        from broker import metrics

        try:
            metrics.serve(config.metrics.port, config.metrics.host)
        except OSError as exc:
            print(
                f"mcp-broker serve: cannot serve metrics on {config.metrics.host}:{config.metrics.port} "
                f"({exc.strerror}); set metrics.port, or metrics.enabled: false",
                file=sys.stderr,
            )
            return 1
    uvicorn.run(
        "broker.asgi:app",
        factory=True,
        host=args.host or config.server.host,
        port=args.port or config.server.port,
        workers=config.server.workers,
        log_config=None,
        access_log=False,
        server_header=False,
        **proxy_options(config.server.trusted_proxies),
    )
    return 0


def proxy_options(trusted_proxies: list[str]) -> dict[str, Any]:
    """uvicorn's ``X-Forwarded-*`` handling: honoured from ``server.trusted_proxies`` only. With none,
    ignored outright (uvicorn's own default, or ``FORWARDED_ALLOW_IPS``, would trust 127.0.0.1)."""
    return {"proxy_headers": bool(trusted_proxies), "forwarded_allow_ips": ",".join(trusted_proxies)}


def _cmd_dev(args: argparse.Namespace) -> int:
    from broker.devstack.process import MissingBinary
    from broker.devstack.stack import DevOptions, PortInUse, run_dev

    opts = DevOptions(
        state_dir=Path(args.state_dir or os.environ.get("MCP_BROKER_STATE_DIR") or ".state").resolve(),
        broker_port=args.broker_port,
        mcp_port=args.mcp_port,
        log_format=args.log_format,
    )
    try:
        return run_dev(opts)
    except (MissingBinary, PortInUse) as exc:
        print(f"mcp-broker dev: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _cmd_explain(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from broker.policy import Policy
    from broker.policy.delegation import DelegationPolicy
    from broker.policy.explain import explain, given_identity, render
    from providers.base import Identity, Lifecycle, LookupProvider, ProviderError
    from providers.registry import UnsupportedProvider, open_provider

    loaded = _load("explain", args.config)
    if isinstance(loaded, int):
        return loaded
    _, config = loaded
    provider_config = next((p for p in config.providers if p.id == args.provider), None)
    if provider_config is None:
        known = ", ".join(p.id for p in config.providers) or "none"
        print(f"mcp-broker explain: no provider {args.provider!r} (configured: {known})", file=sys.stderr)
        return 2

    async def identity() -> Identity:
        if args.groups is not None:
            groups = [g.strip() for g in args.groups.split(",") if g.strip()]
            return given_identity(provider_config, args.user, frozenset(groups))
        provider = open_provider(provider_config)
        try:
            if not isinstance(provider, LookupProvider):
                raise UnsupportedProvider(f"provider {args.provider!r} cannot look users up; pass --groups a,b")
            return await provider.lookup(args.user)
        finally:
            if isinstance(provider, Lifecycle):
                await provider.aclose()

    if args.groups is None and not args.user:
        print("mcp-broker explain: give --user NAME (looked up upstream) or --groups a,b", file=sys.stderr)
        return 2
    try:
        who = asyncio.run(identity())
    except (ProviderError, UnsupportedProvider) as exc:
        print(f"mcp-broker explain: {getattr(exc, 'public', '')} {exc}".strip(), file=sys.stderr)
        return 1
    rules = DelegationPolicy(config.delegation.targets, config.delegation.rules)
    report = explain(Policy(config.resources, config.mappings, config.external_resources), who, args.resource, rules)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _cmd_mcp_app(args: argparse.Namespace) -> int:
    from mcp_app.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-broker", description="Identity-federation broker for MCP.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the broker")
    serve.add_argument("--config", help=f"configuration file (default: ${ENV_VAR})")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check-config", help="validate a configuration file and list every problem")
    check.add_argument("file")
    check.set_defaults(func=_cmd_check_config)

    dev = sub.add_parser("dev", help="run the whole stack locally on embedded defaults")
    dev.add_argument("--state-dir", help="where the private Redis keeps its data (default ./.state)")
    dev.add_argument("--broker-port", type=int, default=8000)
    dev.add_argument("--mcp-port", type=int, default=8001)
    dev.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    dev.set_defaults(func=_cmd_dev)

    explain = sub.add_parser("explain", help="show which scopes a user gets, and which rules decide")
    explain.add_argument("--config", help=f"configuration file (default: ${ENV_VAR})")
    explain.add_argument("--provider", required=True, help="provider id")
    explain.add_argument("--user", help="username, looked up in the provider when it can (LDAP)")
    explain.add_argument("--groups", help="comma-separated groups instead of a lookup")
    explain.add_argument("--resource", help="only this resource URI")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func=_cmd_explain)

    from mcp_app.cli import build_parser as mcp_parser

    mcp = sub.add_parser("mcp-app", help="the protected MCP server (mcp-app serve)")
    mcp_parser(mcp)
    mcp.set_defaults(func=_cmd_mcp_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
