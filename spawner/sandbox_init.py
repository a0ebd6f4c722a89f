"""The first process inside a local sandbox: it bridges the sandbox's network, then runs the server.

A sandbox has a network namespace of its own with nothing but a loopback, so nothing in it
can reach the host's ports, another user's server or the network. Two bridges cross that
boundary, each over a Unix socket in the folder the hub binds at ``/run/portal``:

- ``server.sock``, made by the hub and listened on here (its descriptor is passed in), leads
  to ``127.0.0.1:<server port>`` inside: how the proxy and the hub reach the server (the hub
  listens on the same port on the host's loopback and forwards to this socket);
- ``127.0.0.1:<hub port>`` inside, listened on here, leads to ``hub.sock``, which the hub
  listens on and forwards to its own API: how the server reaches the hub, and nothing else.

The hub imports :func:`bridge` for its side of both. This file is run by path with
``python -I -S``, so it imports only the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on (a half-close, as HTTP may use)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()


async def bridge(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connect: Callable[[], Awaitable[Streams]],
) -> None:
    """Join an accepted connection to a new one made by ``connect``, both ways, until both end."""
    try:
        up_reader, up_writer = await connect()
    except OSError:
        writer.transport.abort()
        return
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    for side in (writer, up_writer):
        side.close()


async def serve(
    run: Path, server_fd: int, hub_port: int, server_port: int, command: list[str]
) -> int:
    """Open both bridges, run ``command``, pass on the signals that stop it; its exit code."""
    to_server = await asyncio.start_unix_server(
        lambda r, w: bridge(r, w, lambda: asyncio.open_connection("127.0.0.1", server_port)),
        sock=socket.socket(fileno=server_fd),
    )
    to_hub = await asyncio.start_server(
        lambda r, w: bridge(r, w, lambda: asyncio.open_unix_connection(str(run / "hub.sock"))),
        "127.0.0.1",
        hub_port,
    )
    async with to_server, to_hub:
        process = await asyncio.create_subprocess_exec(*command)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, process.send_signal, sig)
        return await process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bridge a sandbox's network and run a server.")
    parser.add_argument("--run", type=Path, required=True, help="folder of the two sockets")
    parser.add_argument("--server-fd", type=int, required=True, help="server.sock, listening")
    parser.add_argument("--hub-port", type=int, required=True)
    parser.add_argument("--server-port", type=int, required=True)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    ports = args.hub_port, args.server_port
    return asyncio.run(serve(args.run, args.server_fd, *ports, args.command))


if __name__ == "__main__":
    sys.exit(main())
