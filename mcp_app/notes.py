"""The demo team notes store, in Redis, with per-user attribution."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from mcp_broker_verifier.redis_client import RedisClient

MAX_TITLE = 200
MAX_BODY = 10_000
MAX_NOTES = 1000


class NoteError(ValueError):
    """Invalid input, told to the caller as a tool error."""


class NotesStore:
    def __init__(self, redis: RedisClient, key: str) -> None:
        self.redis = redis
        self.key = key

    async def list(self) -> list[dict[str, Any]]:
        notes = [json.loads(v) for v in (await self.redis.hgetall(self.key)).values()]
        return sorted(
            ({k: n[k] for k in ("id", "title", "author", "created_at")} for n in notes),
            key=lambda n: n["created_at"],
        )

    async def get(self, note_id: str) -> dict[str, Any]:
        raw = await self.redis.hget(self.key, note_id) if len(note_id) <= 64 else None
        if raw is None:
            raise NoteError(f"no note with id {note_id[:64]!r}")
        note: dict[str, Any] = json.loads(raw)
        return note

    async def create(self, title: str, body: str, author: str) -> dict[str, Any]:
        title = title.strip()
        if not title or len(title) > MAX_TITLE:
            raise NoteError(f"title must be 1 to {MAX_TITLE} characters")
        if len(body) > MAX_BODY:
            raise NoteError(f"body must be at most {MAX_BODY} characters")
        if await self.redis.hlen(self.key) >= MAX_NOTES:
            raise NoteError(f"the notes store is full ({MAX_NOTES} notes); delete some first")
        note: dict[str, Any] = {
            "id": secrets.token_urlsafe(8),
            "title": title,
            "body": body,
            "author": author,
            "created_at": time.time(),
        }
        await self.redis.hset(self.key, note["id"], json.dumps(note))
        return note

    async def delete(self, note_id: str) -> bool:
        return bool(await self.redis.hdel(self.key, note_id)) if len(note_id) <= 64 else False
