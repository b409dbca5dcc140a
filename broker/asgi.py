"""ASGI factory for ``uvicorn --factory broker.asgi:app`` (one per worker process)."""

from __future__ import annotations

from fastapi import FastAPI

from broker.app import create_app
from broker.config.loader import ENV_VAR, config_path, load_config


def app() -> FastAPI:
    path = config_path()
    if path is None:
        raise RuntimeError(f"set {ENV_VAR} to the configuration file")
    return create_app(load_config(path))
