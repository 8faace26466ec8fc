"""The load bench's own logic: the generator's fan-out over processes and connections, the spread
and percentile maths, the verdict, the side-by-side table, the command line, and finding a
server's PID under a wrapper. No figure is asserted, only what the bench computes from them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.common import spread, weighted_percentile
from bench.load import ServerProc, _parse, enode_port
from bench.loadgen import (
    GenPlan,
    chunk_sizes,
    connection_indices,
    new_plan,
    run_generator,
)
from bench.loadmeasure import Measures, archive_count, side_by_side, verdict
from bench.procfs import children, descendants, listening_pid, server_pid

# -- fan-out ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "total"), [(1, 1), (10, 3), (1000, 6), (7, 7), (99, 8)])
def test_every_envelope_goes_to_exactly_one_connection(n: int, total: int) -> None:
    seen = [i for c in range(total) for i in connection_indices(n, c, total)]
    assert sorted(seen) == list(range(n))
    sizes = [len(connection_indices(n, c, total)) for c in range(total)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("count", "per"), [(0, 50), (1, 50), (50, 50), (51, 50), (1234, 7)])
def test_chunks_cover_the_count(count: int, per: int) -> None:
    sizes = chunk_sizes(count, per)
    assert sum(sizes) == count and all(0 < s <= per for s in sizes)


def test_packet_size_is_one_cycle_of_the_rate_when_paced() -> None:
    flat = GenPlan("enode://x", 1000, procs=2, conns=2, per_packet=50)
    assert flat.packet_size() == 50
    paced = GenPlan("enode://x", 1000, procs=2, conns=2, rate=400.0, cycle_s=0.3)
    assert paced.packet_size() == 30  # 100 env/s per connection × 0.3 s
    assert GenPlan("enode://x", 10, procs=4, conns=1, rate=1.0).packet_size() == 1


def test_a_plan_refuses_fewer_envelopes_than_connections() -> None:
    with pytest.raises(ValueError, match="cannot feed"):
        run_generator(new_plan("enode://x", 3, procs=2, conns=2))


@pytest.mark.parametrize("rate", [None, 400.0])
def test_the_process_fan_out_delivers_exactly_n_envelopes(tmp_path: Path, rate: float | None) -> None:
    srv = ServerProc(tmp_path)
    srv.start()
    try:
        calls: list[str] = []
        plan = new_plan(srv.enode, 1003, procs=3, conns=2, rate=rate, timeout_s=120)
        gen = run_generator(plan, on_start=lambda: calls.append("start"), on_end=lambda: calls.append("end"))
        held = archive_count(srv.data_dir)
    finally:
        srv.stop()
    assert calls == ["start", "end"]
    assert len(gen.workers) == 3 and len(gen.conns) == 6
    assert gen.sent == gen.acked == held == 1003
    assert sorted(c.sent for c in gen.conns) == [167] * 5 + [168]
    assert not gen.closed
    # one latency sample per acknowledged packet, weighted by its envelopes
    assert sum(w for _, w in gen.latencies()) == 1003
    assert all(lat >= 0 for lat, _ in gen.latencies())
    assert gen.seconds() > 0 and gen.end >= gen.start
    lower, upper = plan.sent_range()
    assert upper - lower == 1002 // plan.per_second


# -- maths -----------------------------------------------------------------------------------------


def test_spread_is_median_min_max() -> None:
    s = spread([5.0, 1.0, 9.0, 3.0, 7.0])
    assert (s.median, s.low, s.high, s.runs) == (5.0, 1.0, 9.0, 5)
    assert spread([4.0, 1.0, 3.0, 2.0]).median == 2.5
    assert spread([2.0]).median == 2.0
    assert s.note() == "median of 5 (min 1, max 9)"
    with pytest.raises(ValueError):
        spread([])


def test_weighted_percentile_counts_each_envelope() -> None:
    # 98 envelopes acked after 0.1 s, one after 0.5 s, one after 2 s
    samples = [(0.1, 98), (0.5, 1), (2.0, 1)]
    assert weighted_percentile(samples, 0.5) == 0.1
    assert weighted_percentile(samples, 0.98) == 0.1
    assert weighted_percentile(samples, 0.99) == 0.5
    assert weighted_percentile(samples, 1.0) == 2.0
    assert weighted_percentile([(3.0, 1), (1.0, 1)], 0.5) == 1.0
    with pytest.raises(ValueError):
        weighted_percentile([], 0.5)
    with pytest.raises(ValueError):
        weighted_percentile(samples, 1.5)


def test_verdict_names_what_set_the_pace() -> None:
    assert verdict(0.95, 0.0, 0) == "server-bound"
    assert verdict(0.5, 0.6, 0).startswith("generator-bound by CPU time, but the server waited for a CPU 60%")
    assert verdict(0.3, 0.1, 0) == "generator-bound"
    assert verdict(0.3, None, 12) == "generator-bound; in-flight cap reached 12 times"


def test_side_by_side_has_one_column_per_server_and_ratios() -> None:
    a = Measures("pimail", {"ingest": 30_000.0, "rss_mb": 60.0})
    b = Measures("statusd", {"ingest": 20_000.0, "rss_mb": 240.0})
    c = Measures("wnode", {"ingest": 10_000.0})
    table = side_by_side([a, b, c]).splitlines()
    assert table[0] == "| measure | pimail | statusd | wnode | pimail/statusd | pimail/wnode |"
    ingest = next(line for line in table if line.startswith("| ingest"))
    assert ingest.endswith("| 30,000 | 20,000 | 10,000 | 1.50 | 3.00 |")
    rss = next(line for line in table if line.startswith("| server RSS"))
    assert rss.endswith("| 60 | 240 | – | 0.25 | – |")


# -- command line ----------------------------------------------------------------------------------


def test_each_target_takes_the_options_that_follow_it() -> None:
    a = _parse(["--target", "enode://a@127.0.0.1:1", "--target-pid", "11",
                "--target", "enode://b@127.0.0.1:2", "--target-form", "legacy", "--target-password", "wwww",
                "--target-name", "wnode"])
    assert [(s.enode, s.pid, s.form, s.password, s.name) for s in a.specs] == [
        ("enode://a@127.0.0.1:1", 11, "direct", "status-offline-inbox", ""),
        ("enode://b@127.0.0.1:2", None, "legacy", "wwww", "wnode")]
    assert _parse([]).specs == []
    assert enode_port("enode://a@127.0.0.1:30303?discport=0") == 30303
    assert enode_port("enode://a") is None


@pytest.mark.parametrize(("args", "message"), [
    (["--target-pid", "1"], "--target-pid must follow the --target it belongs to"),
    (["--target", "enode://a@127.0.0.1:1", "--target-pid", "1", "--target-pid", "2"],
     "--target-pid given twice for one --target"),
])
def test_target_options_out_of_place_exit_2(args: list[str], message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "bench.load", *args], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert r.returncode == 2
    assert message in r.stderr.strip().splitlines()[-1]


# -- the server's PID ------------------------------------------------------------------------------

LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "time.sleep(60)\n"
)


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def _wait_child(pid: int) -> list[int]:
    deadline = time.monotonic() + 10
    while not children(pid):
        assert time.monotonic() < deadline, "the wrapper's child never appeared"
        time.sleep(0.02)
    return children(pid)


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_the_server_pid_is_found_below_a_timeout_wrapper() -> None:
    wrapper, port = _start(["timeout", "60", sys.executable, "-c", LISTENER])
    try:
        (child,) = _wait_child(wrapper.pid)
        assert child != wrapper.pid
        pid, note = server_pid(port, wrapper.pid)
        assert pid == child and f"below the given {wrapper.pid} (timeout)" in note
        assert server_pid(port, None)[0] == child  # no PID given: whoever listens on the port
        assert server_pid(port, child)[0] == child  # the server's own PID stays itself
        assert server_pid(None, wrapper.pid)[0] == child  # no port: the wrapper's only child
        assert listening_pid(port) == child
    finally:
        wrapper.kill()
        wrapper.wait()


def test_the_server_pid_is_found_below_a_shell_and_a_dead_pid_is_reported() -> None:
    # the shell runs the listener as a child (a second command keeps it from exec'ing)
    shell, port = _start(["sh", "-c", f'"{sys.executable}" -c "$0"; true', LISTENER])
    try:
        _wait_child(shell.pid)
        pid, _note = server_pid(port, shell.pid)
        assert pid in descendants(shell.pid) and pid != shell.pid
    finally:
        for p in descendants(shell.pid):
            subprocess.run(["kill", str(p)], check=False)
        shell.wait(10)
    pid, note = server_pid(port, shell.pid)
    assert pid is None and "is not running" in note


def test_phases_share_the_connections_and_a_server_without_acks_is_drained_by_a_ping(tmp_path: Path) -> None:
    from bench.loadgen import Generator, Link

    srv = ServerProc(tmp_path)
    srv.start()
    try:
        with Generator(Link(srv.enode, procs=2, conns=2)) as g:
            first = g.run(new_plan(srv.enode, 400, procs=2, conns=2, timeout_s=120))
            # as if the server sent no acks: each connection ends at the Pong after its last packet
            second = g.run(new_plan(srv.enode, 300, procs=2, conns=2, want_acks=False, timeout_s=120))
    finally:
        srv.stop()  # the second phase's group is committed on the way out
    held = archive_count(srv.data_dir)
    assert first.acked == 400 and second.sent == 300 and second.acked == 0
    assert not first.closed and not second.closed
    assert all(c.drained >= c.last_send > 0 for c in second.conns)
    assert held == 700  # distinct envelopes in the two phases, every one archived
