"""``mcp-broker``: serve, check-config, dev, and the protected MCP server (``mcp-app serve``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from broker.config.loader import ENV_VAR, ConfigError, config_path, load_config


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


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from broker.log import configure_logging

    path = config_path(args.config)
    if path is None:
        print(f"mcp-broker serve: give --config FILE or set {ENV_VAR}", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    if config.redis.url is None:
        print(
            "mcp-broker serve: redis.url is not set; set it, or use `mcp-broker dev` for a private Redis",
            file=sys.stderr,
        )
        return 1
    configure_logging(config.logging.level, config.logging.format)
    os.environ[ENV_VAR] = str(path.resolve())
    uvicorn.run(
        "broker.asgi:app",
        factory=True,
        host=args.host or config.server.host,
        port=args.port or config.server.port,
        workers=config.server.workers,
        log_config=None,
        access_log=False,
        proxy_headers=bool(config.server.trusted_proxies),
        forwarded_allow_ips=",".join(config.server.trusted_proxies) or None,
        server_header=False,
    )
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from broker.devstack.process import MissingBinary
    from broker.devstack.stack import DevOptions, run_dev

    opts = DevOptions(
        state_dir=Path(args.state_dir or os.environ.get("MCP_BROKER_STATE_DIR") or ".state").resolve(),
        broker_port=args.broker_port,
        mcp_port=args.mcp_port,
        log_format=args.log_format,
    )
    try:
        return run_dev(opts)
    except MissingBinary as exc:
        print(f"mcp-broker dev: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


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
