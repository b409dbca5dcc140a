"""tools/call requests per second of a protected MCP server, with auth on versus off.

Two runs of the same streamable-HTTP MCP server (MCP SDK ``MCPServer``, stateless, JSON
responses, one uvicorn worker on uvloop + httptools) with one trivial tool: once behind
mcp_app's ``BearerGuard`` (JWT verification with the verified-token cache, the in-memory
revocation set fed from a real Redis, per-tool scope check), once without it. The load
generator is ``wrk`` (C), so the server gets the CPU. Loopback only, bounded duration.

Both servers run side by side and the measurement alternates between them for ``--rounds``
rounds, so drift in the machine's load (this VM's is noisy) hits both alike; the figure is the
ratio of the medians, with every round's figures printed.

Run: .venv/bin/python bench/mcp_calls.py [--rounds 5] [--duration 4] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from broker.devstack import free_port

ISSUER = "http://127.0.0.1:{port}"
RESOURCE = "http://127.0.0.1:{port}/mcp"


def serve(mode: str, port: int, key_file: str, redis_url: str) -> None:
    """The server process: the MCP app, with or without the bearer guard."""
    import logging

    import uvicorn
    from cryptography.hazmat.primitives import serialization
    from jose import jwk
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from broker.store.client import create_redis
    from mcp_broker_verifier.auth import BearerGuard
    from mcp_broker_verifier.revocations import RevocationWatcher
    from mcp_broker_verifier.verifier import BrokerTokenVerifier, JwksCache

    logging.getLogger("mcp").setLevel(logging.WARNING)  # one INFO line per stateless request otherwise
    pem = Path(key_file).read_bytes()
    public = serialization.load_pem_private_key(pem, None).public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwks = {
        "keys": [
            {**jwk.construct(public_pem.decode(), "ES256").to_dict(), "kid": "bench", "use": "sig", "alg": "ES256"}
        ]
    }
    server = MCPServer(name="bench")

    @server.tool(description="Echo")
    async def echo(text: str) -> str:
        return text

    resource = RESOURCE.format(port=port)
    mcp = server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(
            allowed_hosts=[f"127.0.0.1:{port}"], allowed_origins=[f"http://127.0.0.1:{port}"]
        ),
    )

    async def jwks_route(_: Request) -> JSONResponse:
        return JSONResponse(jwks)

    # The same outer app in both runs, so the difference is the guard alone.
    app: object = Starlette(routes=[Route("/jwks.json", jwks_route), Mount("/", app=mcp)], lifespan=None)

    import contextlib

    @contextlib.asynccontextmanager
    async def plain_lifespan(_: Starlette):  # type: ignore[no-untyped-def]
        async with mcp.router.lifespan_context(mcp):
            yield

    app = Starlette(routes=[Route("/jwks.json", jwks_route), Mount("/", app=mcp)], lifespan=plain_lifespan)
    if mode == "on":
        redis = create_redis(redis_url)
        watcher = RevocationWatcher(redis, key_prefix="bench")
        http = httpx.AsyncClient()
        verifier = BrokerTokenVerifier(
            issuer=ISSUER.format(port=port),
            resource=resource,
            jwks=JwksCache(f"http://127.0.0.1:{port}/jwks.json", http),
            revocations=watcher,
        )
        guard = BearerGuard(
            mcp,
            verifier=verifier,
            path="/mcp",
            resource_metadata_url=f"http://127.0.0.1:{port}/prm",
            scopes_supported=["notes:read"],
            tool_scopes={"echo": "notes:read"},
        )

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette):  # type: ignore[no-untyped-def]
            await watcher.start()
            async with mcp.router.lifespan_context(mcp):
                yield
            await watcher.stop()

        app = Starlette(routes=[Route("/jwks.json", jwks_route), Mount("/", app=guard)], lifespan=lifespan)
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop", http="httptools"
    )


LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["content-type"] = "application/json"
wrk.headers["accept"] = "application/json, text/event-stream"
%s
"""


def run_wrk(url: str, token: str | None, duration: int, connections: int, workdir: Path) -> dict[str, float]:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hello"}}}
    )
    auth = f'wrk.headers["authorization"] = "Bearer {token}"' if token else ""
    script = workdir / "call.lua"
    script.write_text(LUA % (body, auth))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50": latency.get("50", "?"),
        "p99": latency.get("99", "?"),  # type: ignore[dict-item]
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(mode: str, workdir: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [sys.executable, __file__, "--serve", mode, "--port", str(port), "--key-file", str(workdir / "key.pem")]
    proc = subprocess.Popen(
        [*argv, "--redis-url", redis_url],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    url = RESOURCE.format(port=port)
    for _ in range(100):
        try:
            httpx.get(url.replace("/mcp", "/nothing"), timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, url


def bench_token(pem: bytes, url: str) -> str:
    from jose import jwt

    now = int(time.time())
    claims = {
        "iss": url.removesuffix("/mcp"),
        "aud": url,
        "sub": "bench",
        "client_id": "bench",
        "scope": "notes:read",
        "iat": now,
        "exp": now + 3600,
        "jti": "j",
        "sid": "s",
    }
    return str(jwt.encode(claims, pem.decode(), algorithm="ES256", headers={"kid": "bench", "typ": "at+jwt"}))


def check_call(url: str, token: str | None) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    answer = httpx.post(url, content=json.dumps(body), headers=headers)
    assert answer.status_code == 200 and '"x"' in answer.text, answer.text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=4, help="seconds per round and mode")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of auth off and on")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", choices=["on", "off"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--key-file")
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.key_file, args.redis_url)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: run `sudo apt-get install wrk` (or `make bench`, which installs it)")

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from broker.devstack import RedisServer

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (workdir / "key.pem").write_bytes(pem)
        redis = RedisServer(workdir, persist=False).start()
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        rounds: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        try:
            for mode in ("off", "on"):
                servers[mode] = start_server(mode, workdir, redis.url)
            tokens = {"off": None, "on": bench_token(pem, servers["on"][1])}
            for mode in ("off", "on"):
                check_call(servers[mode][1], tokens[mode])
                run_wrk(servers[mode][1], tokens[mode], 2, args.connections, workdir)  # warm-up
            # Both servers stay up and the modes alternate (off first, then on first), so drift
            # in the machine's load hits both alike; each server idles while the other runs.
            for n in range(args.rounds):
                for mode in ("off", "on") if n % 2 == 0 else ("on", "off"):
                    proc, url = servers[mode]
                    before = cpu_seconds(proc.pid)
                    result = run_wrk(url, tokens[mode], args.duration, args.connections, workdir)
                    calls = result["rps"] * args.duration
                    result["cpu_us"] = (cpu_seconds(proc.pid) - before) / calls * 1e6 if calls else 0.0
                    rounds[mode].append(result)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
            redis.stop()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    for mode in ("off", "on"):
        rates = [r["rps"] for r in rounds[mode]]
        best = rounds[mode][rates.index(sorted(rates)[len(rates) // 2])]
        print(
            f"auth {mode:<3}  median {statistics.median(rates):8.0f} tools/call per second over {len(rates)} rounds"
            f" ({', '.join(f'{r:.0f}' for r in rates)});  median round p50 {best['p50']} p99 {best['p99']},"
            f" non-2xx {int(sum(r['errors'] for r in rounds[mode]))}"
        )
    cpu_key = "cpu_us"
    cpu = {mode: statistics.median(r[cpu_key] for r in rounds[mode]) for mode in rounds}
    print(
        f"server CPU per tools/call, medians: auth off {cpu['off']:.0f} µs, auth on {cpu['on']:.0f} µs;"
        f" auth costs {cpu['on'] - cpu['off']:.0f} µs ({(cpu['on'] / cpu['off'] - 1) * 100:.1f}%)"
        f" (per round, on: {', '.join(f'{r[cpu_key]:.0f}' for r in rounds['on'])};"
        f" off: {', '.join(f'{r[cpu_key]:.0f}' for r in rounds['off'])})"
    )
    costs = [1 - on["rps"] / off["rps"] for off, on in zip(rounds["off"], rounds["on"], strict=True)]
    print(
        f"auth costs {(1 - statistics.median(r['rps'] for r in rounds['on']) / statistics.median(r['rps'] for r in rounds['off'])) * 100:.1f}%"
        f" of unauthenticated tools/call throughput (medians; per round: {', '.join(f'{c * 100:.1f}%' for c in costs)})"
    )


if __name__ == "__main__":
    main()
