"""ASGI factory for ``uvicorn --factory broker.asgi:app`` (one per worker process)."""

from __future__ import annotations

from fastapi import FastAPI

from broker.app import create_app
from broker.config.loader import ENV_VAR, config_path, load_config
from broker.log import configure_logging


def app() -> FastAPI:
    path = config_path()
    if path is None:
        raise RuntimeError(f"set {ENV_VAR} to the configuration file")
    config = load_config(path)
    # Each uvicorn worker is a fresh interpreter: set its logging up like the parent's.
    configure_logging(config.logging.level, config.logging.format)
    return create_app(config)
