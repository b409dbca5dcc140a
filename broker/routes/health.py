"""``/healthz`` (the process answers) and ``/readyz`` (it can do its job)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from broker.routes.deps import KeyRingDep, RedisDep

router = APIRouter(tags=["health"])


@router.get("/healthz", include_in_schema=False)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})


@router.get("/readyz", include_in_schema=False)
async def readyz(redis: RedisDep, keyring: KeyRingDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(redis.ping(), timeout=2.0)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    checks["signing_keys"] = "ok" if keyring.ready else "not loaded"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers={"cache-control": "no-store"},
    )
