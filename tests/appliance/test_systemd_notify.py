"""systemd notify: READY, STATUS, WATCHDOG (only while not failing), STOPPING — on a real socket."""

from __future__ import annotations

import asyncio
import io
import logging
import os

import pytest

from pimail.appliance import journal
from pimail.appliance.systemd import SystemdNotifier, watchdog_interval_s
from pimail.health import HealthModel, Severity
from tests.appliance.notify_fixtures import NotifySocket
from tests.waiting import eventually


@pytest.fixture
def notify_socket() -> NotifySocket:
    s = NotifySocket()
    yield s  # type: ignore[misc]
    s.close()


def test_nothing_without_notify_socket() -> None:
    n = SystemdNotifier(env={})
    assert not n.enabled and n.backend == "none"
    assert n.notify("READY=1") is False
    n.ready()
    n.status("x")
    n.stopping()


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_status_stopping_arrive(abstract: bool) -> None:
    sock = NotifySocket(abstract=abstract)
    try:
        n = SystemdNotifier(env={"NOTIFY_SOCKET": sock.address})
        assert n.backend == "socket"
        n.ready("healthy, 0 peers")
        n.status("healthy, 1 peers")
        n.status("healthy, 1 peers")  # unchanged: not resent
        n.stopping()
        assert sock.wait_for("STOPPING=1", 2)
        msgs = sock.drain()
        assert msgs[0] == "READY=1\nSTATUS=healthy, 0 peers"
        assert msgs.count("STATUS=healthy, 1 peers") == 1
        assert msgs[-1].startswith("STOPPING=1\nSTATUS=")
    finally:
        sock.close()


def test_systemd_python_backend_when_the_environment_is_ours(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("systemd.daemon")  # in the test extras; the socket fallback is tested above
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    n = SystemdNotifier()
    assert n.backend == "systemd-python"
    n.ready()
    assert notify_socket.wait_for("READY=1", 2)


def test_gone_socket_is_not_an_error(tmp_path: object) -> None:
    n = SystemdNotifier(env={"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
    assert n.notify("READY=1") is False


def test_watchdog_interval_parsing() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "abc"}) is None
    assert watchdog_interval_s({}) is None


def test_watchdog_pings_only_while_not_failing(notify_socket: NotifySocket) -> None:
    async def scenario() -> None:
        h = HealthModel()
        h.mark_started()
        n = SystemdNotifier(env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "150000"})
        n.start(h, lambda: h.summary)
        await eventually(lambda: n.watchdog_pings >= 4, what="4 pings while healthy")
        h.report("archive.unwritable", Severity.FAILING, "archive unwritable")
        await asyncio.sleep(0.1)
        stopped_at = n.watchdog_pings
        await asyncio.sleep(0.4)
        assert n.watchdog_pings == stopped_at, "no WATCHDOG=1 while failing"
        h.report("disk.low", Severity.DEGRADED, "disk low")
        h.clear("archive.unwritable")
        await eventually(lambda: n.watchdog_pings > stopped_at, what="degraded still feeds the watchdog")
        await n.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert notify_socket.wait_for("WATCHDOG=1", 1)
    assert notify_socket.count("WATCHDOG=1") >= 5
    assert notify_socket.count("STATUS=healthy") == 1


def test_status_line_errors_do_not_stop_the_notifier(notify_socket: NotifySocket) -> None:
    async def scenario() -> None:
        h = HealthModel()
        n = SystemdNotifier(env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "90000"})

        def broken() -> str:
            raise RuntimeError("bug")

        n.start(h, broken)
        await eventually(lambda: n.watchdog_pings >= 2, what="pings despite a broken status line")
        await n.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_journal_stream_detection(tmp_path: object) -> None:
    buf = io.StringIO()
    assert not journal.stderr_is_journal(buf, {"JOURNAL_STREAM": "1:2"})
    assert not journal.stderr_is_journal(env={})
    assert not journal.stderr_is_journal(env={"JOURNAL_STREAM": "garbage"})
    with open(os.devnull, "w") as f:
        st = os.fstat(f.fileno())
        assert journal.stderr_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not journal.stderr_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})


def test_priority_prefixes_for_journald_without_systemd_python() -> None:
    fmt = journal._PriorityPrefixFormatter("%(name)s: %(message)s")
    rec = logging.LogRecord("pimail.x", logging.ERROR, __file__, 1, "a\nb", None, None)
    assert fmt.format(rec) == "<3>pimail.x: a\n<3>b"
    rec = logging.LogRecord("pimail.x", logging.DEBUG, __file__, 1, "d", None, None)
    assert fmt.format(rec) == "<7>pimail.x: d"


def test_setup_logging_readable_lines_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert journal.setup_logging(force=True) == "stderr"
        assert journal.setup_logging() == "existing"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
