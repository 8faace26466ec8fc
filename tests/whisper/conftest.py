"""Run ``async def`` tests in this directory as tests/node does (fresh loop, bounded in time, an
exception escaping into the loop fails the test).

Plain asyncio by default; ``PIMAIL_TEST_UVLOOP=1`` runs them on uvloop (what the daemon uses).
"""

from __future__ import annotations

import pytest

from tests.node.conftest import run_bounded

ASYNC_TEST_TIMEOUT_S = 60.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    return run_bounded(pyfuncitem, ASYNC_TEST_TIMEOUT_S)
