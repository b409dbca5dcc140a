"""``mcp-app serve``: run the protected MCP server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import uvicorn

from broker.log import configure_logging
from mcp_app.settings import McpAppSettings


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="mcp-app", description="The protected demo MCP server.")
    sub = parser.add_subparsers(dest="mcp_command", required=True)
    serve = sub.add_parser("serve", help="run the MCP server (settings from MCP_APP_* variables)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--resource-url", help="canonical URI of this server (the token audience)")
    serve.add_argument("--issuer", help="the broker's issuer URL")
    serve.add_argument("--redis-url")
    return parser


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "resource_url": args.resource_url,
            "issuer": args.issuer,
            "redis_url": args.redis_url,
        }.items()
        if v is not None
    }
    try:
        settings = McpAppSettings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"mcp-app: {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging("info", settings.log_format)
    if settings.metrics_port:
        from broker.metrics_env import prepare

        prepare()  # before prometheus_client is imported anywhere
        from broker import metrics

        try:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        except OSError as exc:
            print(
                f"mcp-app: cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} ({exc.strerror}); "
                "set MCP_APP_METRICS_PORT, or 0 to disable",
                file=sys.stderr,
            )
            return 1
    from mcp_app.app import create_app

    uvicorn.run(create_app(settings), **server_options(settings))
    return 0


def server_options(settings: McpAppSettings) -> dict[str, Any]:
    """How uvicorn serves the app. Nothing here reads a client address from ``X-Forwarded-*``, and
    uvicorn's default would take it from any caller on 127.0.0.1: the headers are ignored."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "forwarded_allow_ips": "",
    }


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
