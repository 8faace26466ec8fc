"""What the load bench reads about a server process from /proc: CPU, memory, bytes written, and
which process it is.

A reference peer is often started under a wrapper (``timeout 600 statusd …``, a shell, ``taskset``),
so the PID its operator hands us may be the wrapper's. ``server_pid`` finds the process that
actually listens on the server's TCP port (its socket inode in /proc/net/tcp, then the process
holding that inode open), falling back to the wrapper's descendants.
"""

from __future__ import annotations

import os
from pathlib import Path

TCP_LISTEN = "0A"  # /proc/net/tcp state column: TCP_LISTEN


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM …); 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def proc_write_bytes(pid: int) -> int | None:
    """Bytes the process caused to be written to storage (/proc/PID/io), None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU-seconds of ``pid`` so far (all its threads), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children file), ascending."""
    found: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            found.update(int(x) for x in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, breadth first."""
    out: list[int] = []
    queue = children(pid)
    while queue:
        p = queue.pop(0)
        if p in out:
            continue
        out.append(p)
        queue.extend(children(p))
    return out


def listening_inodes(port: int, proc_net: Path = Path("/proc/net")) -> set[int]:
    """Socket inodes listening on TCP ``port`` (any address, IPv4 or IPv6)."""
    inodes: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != TCP_LISTEN:
                continue
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(cols[9]))
    return inodes


def _holds_socket(pid: int, inodes: set[int]) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in inodes:
            return True
    return False


def listening_pid(port: int, among: list[int] | None = None) -> int | None:
    """The process listening on TCP ``port`` (among ``among``, else among every readable process).

    Only processes we may inspect are seen (our own user's): a server started by someone else is
    found through its wrapper's PID or not at all.
    """
    inodes = listening_inodes(port)
    if not inodes:
        return None
    candidates = among if among is not None else sorted(
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    holders = [pid for pid in candidates if _holds_socket(pid, inodes)]
    if not holders:
        return None
    # a fork that inherited the socket (a wrapper that passed it down) is above its child:
    # the deepest holder is the one doing the work
    holders_set = set(holders)
    for pid in holders:
        if not (set(descendants(pid)) & holders_set):
            return pid
    return holders[0]


def server_pid(port: int | None, given: int | None) -> tuple[int | None, str]:
    """The PID to measure and how it was found.

    ``given`` may be the server itself or a wrapper around it (``timeout``, a shell): then the
    descendant listening on ``port`` is taken, or its only descendant. Without ``given``, the
    process listening on ``port``.
    """
    if given is not None:
        if not Path(f"/proc/{given}").exists():
            return None, f"PID {given} is not running"
        below = descendants(given)
        pid = listening_pid(port, [given, *below]) if port is not None else None
        if pid == given:
            return given, f"PID {given} ({proc_name(given)}) listens on port {port}"
        if pid is not None:
            return pid, (f"PID {pid} ({proc_name(pid)}) listens on port {port}, below the given "
                         f"{given} ({proc_name(given)})")
        if len(below) == 1:
            return below[0], f"PID {below[0]} ({proc_name(below[0])}), the only child of {given}"
        return given, f"PID {given} ({proc_name(given)}) as given"
    if port is None:
        return None, "no PID given and no port to look for"
    pid = listening_pid(port)
    if pid is None:
        return None, f"no readable process listens on port {port}"
    return pid, f"PID {pid} ({proc_name(pid)}) listens on port {port}"


def proc_sched_s(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of all of ``pid``'s threads so far,
    from /proc/PID/task/*/schedstat; None if unreadable. The wait is what a crowded machine costs:
    a server that is busy or waiting nearly all the time is the bottleneck, however few CPU-seconds
    it got."""
    run = wait = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue  # a thread that just ended
        run += int(fields[0])
        wait += int(fields[1])
    return run / 1e9, wait / 1e9
