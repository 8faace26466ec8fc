"""What the node's two small HTTP servers (the status page and /metrics) share."""

from __future__ import annotations

import asyncio


async def close_server(server: asyncio.Server, connections: set[asyncio.Task[None]]) -> None:
    """Stop accepting, cancel the connections being served, and wait for both to end."""
    server.close()
    for task in list(connections):
        task.cancel()
    if connections:
        await asyncio.gather(*connections, return_exceptions=True)
    await server.wait_closed()
