"""Prometheus metrics from a real `mcp-broker serve` with two workers, on their own port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from broker.devstack import RedisServer, Slapd, free_port
from tests.broker.flows import Broker, broker_yaml, refresh, tokens_for
from tests.http import wait_ready


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_from_a_two_worker_broker(tmp_path: Path, redis_server: RedisServer, slapd: Slapd) -> None:
    port, metrics_port = free_port(), free_port()
    text = broker_yaml(
        port,
        redis_server.url,
        slapd,
        prefix="metrics",
        extra=f"server: {{host: 127.0.0.1, port: {port}, workers: 2}}\n"
        f"metrics: {{host: 127.0.0.1, port: {metrics_port}}}\n",
    )
    config = tmp_path / "broker.yaml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        broker = Broker(f"http://127.0.0.1:{port}", None)  # type: ignore[arg-type]
        client, tokens = tokens_for(broker, "alice")
        for _ in range(3):
            tokens = refresh(broker, client["client_id"], tokens["refresh_token"]).json()
        body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        # Samples from both workers are summed by the exporter.
        assert _sample(body, "mcpb_tokens_issued_total") == 1
        assert _sample(body, "mcpb_tokens_refreshed_total") == 3
        assert _sample(body, "mcpb_logins_total", provider="demo-ldap", outcome="success") == 1
        assert _sample(body, "mcpb_http_requests_total", route="/token", status="200") == 4
        assert _sample(body, "mcpb_upstream_latency_seconds_count", provider="demo-ldap", operation="login") == 1
        assert 'route="/authorize"' in body
        # The metrics port is not the API port, and the API port has no /metrics.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
    finally:
        proc.terminate()
        proc.wait(15)
