"""A container server is handed to the hub only once it answers HTTP, so the hub's first
readiness check (JupyterHub backs off 0.2, 0.4, 0.8, 1.6 s... between checks) finds it up
and the user is not kept waiting for the next step of that backoff."""

from __future__ import annotations

import asyncio
import time

from spawner.common import until_answering
from tests.support.net import free_port


async def test_returns_as_soon_as_a_late_server_answers() -> None:
    port = free_port()
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readline())
        writer.write(b"HTTP/1.0 403 Forbidden\r\n\r\n")  # any status: the server is up
        await writer.drain()
        writer.close()

    async def start_late() -> asyncio.Server:
        await asyncio.sleep(0.7)
        return await asyncio.start_server(answer, "127.0.0.1", port)

    started = time.monotonic()
    late = asyncio.create_task(start_late())
    assert await until_answering(f"http://127.0.0.1:{port}/user/alice/api", timeout=10)
    waited = time.monotonic() - started
    server = await late
    server.close()
    assert seen == [b"GET /user/alice/api HTTP/1.0\r\n"]
    assert 0.7 <= waited < 5, waited  # after the server came up, long before the timeout


async def test_a_server_that_never_answers_is_left_to_the_hub_after_the_timeout() -> None:
    silent = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    started = time.monotonic()
    assert not await until_answering(f"http://127.0.0.1:{port}/", timeout=1)
    assert time.monotonic() - started < 4
    silent.close()
    assert not await until_answering(f"http://127.0.0.1:{free_port()}/", timeout=0.5)
