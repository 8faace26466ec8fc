"""Run ``async def`` tests in this directory on a fresh event loop, bounded in time.

Plain asyncio by default; ``PIMAIL_TEST_UVLOOP=1`` runs them on uvloop (what the daemon uses).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import pytest

ASYNC_TEST_TIMEOUT_S = 30.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    return run_bounded(pyfuncitem, ASYNC_TEST_TIMEOUT_S)


def run_bounded(pyfuncitem: pytest.Function, timeout_s: float) -> bool | None:
    """Run one ``async def`` test within ``timeout_s``; anything escaping into the loop fails it."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}

    escaped: list[dict[str, Any]] = []

    async def bounded() -> None:
        # anything that escapes into the loop (a callback or an un-awaited task failing) fails the test
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
        await asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout_s)

    if os.environ.get("PIMAIL_TEST_UVLOOP"):
        import uvloop

        uvloop.run(bounded())
    else:
        asyncio.run(bounded())
    assert not escaped, f"exceptions escaped into the event loop: {escaped}"
    return True
