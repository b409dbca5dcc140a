"""Commands of requests running at the same time, sent to one Redis node together.

A refresh grant sends Redis one script. When several requests reach theirs in the same turn of the
event loop (a loaded worker), each on a connection of its own costs a write, a wake-up of Redis and
a read for every one of them. Here the first caller of a turn leads a batch: it lets the others of
that turn join, writes all of their commands on one pooled connection in one go, reads the replies
back in order and hands each caller its own. Redis runs each command on its own, as before (a
script is still one atomic step; a batch is no transaction). A lone request makes a batch of one.

Deadlines are those of the connection: the write and all the replies within ``socket_timeout``
(one deadline for the whole batch, so no caller waits longer than it would have alone). A reply
that is an error goes to its caller only; a failed, stalled or cancelled exchange drops the
connection and fails every caller of the batch that has no reply yet. Nothing is retried: as the
client is configured (``Retry`` with no retries), so are these commands.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_Waiter = tuple[tuple[Any, ...], "asyncio.Future[Any] | None"]


class CommandBatches:
    """``await batches.execute("EVALSHA", sha, 2, key1, key2, arg)``: the reply, or the error
    ``Redis.execute_command`` would raise for it."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._gathering: list[_Waiter] | None = None

    async def execute(self, *command: Any) -> Any:
        gathering = self._gathering
        if gathering is not None:  # a batch of this turn is gathering: join it
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            gathering.append((command, future))
            return await future
        batch: list[_Waiter] = [(command, None)]
        self._gathering = batch
        try:
            await asyncio.sleep(0)  # the other requests of this turn join
            self._gathering = None
            return await self._exchange(batch)
        except BaseException as error:  # the followers without a reply fail alike
            for _, waiter in batch:
                if waiter is not None and not waiter.done():
                    waiter.set_exception(
                        RedisTimeoutError(str(error))
                        if isinstance(error, RedisTimeoutError)
                        else RedisConnectionError(f"the batch of this command failed: {error!r}")
                    )
            raise
        finally:
            if self._gathering is batch:  # cancelled while gathering
                self._gathering = None

    async def _exchange(self, batch: list[_Waiter]) -> Any:
        """Send ``batch``, hand each follower its reply, return the leader's (the first)."""
        pool = self._pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            replies: list[Any] = []
            async with asyncio.timeout(conn.socket_timeout):
                await conn.check_health()
                packed = conn.pack_commands([command for command, _ in batch])
                writer = conn._writer
                if writer is None:
                    await conn.send_packed_command(packed, check_health=False)
                else:  # within this deadline: no task of its own, as send_packed_command makes
                    writer.writelines(packed)
                    await writer.drain()
                for _ in batch:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))  # under the deadline above
                    except ResponseError as error:  # this command's own error: the others go on
                        replies.append(error)
        except TimeoutError:
            await conn.disconnect()
            raise RedisTimeoutError("Redis did not answer a batch of commands within socket_timeout") from None
        except OSError as error:  # a write the socket refused: the error redis-py raises for it
            await conn.disconnect()
            raise RedisConnectionError(f"Error while writing to Redis: {error}") from error
        except BaseException:
            await conn.disconnect()  # replies may be left unread on it: never reuse it
            raise
        finally:
            await pool.release(conn)
        for (_, waiter), reply in zip(batch[1:], replies[1:], strict=True):
            if waiter is not None and not waiter.done():
                if isinstance(reply, ResponseError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        if isinstance(replies[0], ResponseError):
            raise replies[0]
        return replies[0]
