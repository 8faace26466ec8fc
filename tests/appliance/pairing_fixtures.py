"""Helpers for the pairing / QR / status-page tests: a small PNG reader, QR decoding with zxing-cpp,
headless Chromium, and a status provider built from real pieces (NodeKey, HealthModel)."""

from __future__ import annotations

import asyncio
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zxingcpp

from pimail.crypto.keys import NodeKey
from pimail.health import HealthModel

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_TIMEOUT_S = 90.0


# -- images ----------------------------------------------------------------------------------------
def read_png_gray(path: Path) -> tuple[int, int, bytes]:
    """Decode a non-interlaced PNG (grey, RGB, palette, with or without alpha) to 8-bit grey."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, palette = 8, b"", b""
    width = height = depth = ctype = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert interlace == 0, "interlaced PNG not supported"
        elif kind == b"PLTE":
            palette = chunk
        elif kind == b"IDAT":
            idat += chunk
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    bits_pp = channels * depth
    stride = (width * bits_pp + 7) // 8
    bpp = max(1, bits_pp // 8)
    raw = zlib.decompress(idat)
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(line)
        prev = line
    out = bytearray()
    for line in rows:
        for x in range(width):
            if depth < 8:
                bit = x * depth
                v = (line[bit // 8] >> (8 - depth - bit % 8)) & ((1 << depth) - 1)
                if ctype == 3:
                    r, g, b_ = palette[3 * v : 3 * v + 3]
                    out.append((r + g + b_) // 3)
                else:
                    out.append(v * 255 // ((1 << depth) - 1))
            else:
                px = line[x * channels : (x + 1) * channels]  # 8-bit only (16-bit not needed here)
                if ctype in (0, 4):
                    out.append(px[0])
                elif ctype == 3:
                    r, g, b_ = palette[3 * px[0] : 3 * px[0] + 3]
                    out.append((r + g + b_) // 3)
                else:
                    out.append((px[0] + px[1] + px[2]) // 3)
    return width, height, bytes(out)


def modules_to_gray(rows: list[list[bool]], scale: int = 4, border: int = 4) -> tuple[int, int, bytes]:
    """A QR module matrix (True = dark) as an 8-bit grey image with a white quiet zone."""
    width = (len(rows[0]) + 2 * border) * scale
    white_line = b"\xff" * width
    out = bytearray()
    for _ in range(border * scale):
        out += white_line
    for row in rows:
        line = bytearray(b"\xff" * border * scale)
        for dark in row:
            line += (b"\x00" if dark else b"\xff") * scale
        line += b"\xff" * border * scale
        for _ in range(scale):
            out += line
    for _ in range(border * scale):
        out += white_line
    return width, len(out) // width, bytes(out)


def decode_qr(width: int, height: int, gray: bytes) -> list[str]:
    """Texts of all QR codes zxing-cpp finds in an 8-bit grey image."""
    view = memoryview(gray).cast("B", (height, width))
    return [r.text for r in zxingcpp.read_barcodes(view, formats=zxingcpp.BarcodeFormat.QRCode)]


# -- chromium --------------------------------------------------------------------------------------
def chromium_args(profile: Path) -> list[str]:
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]


async def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium to completion; return its stdout (the DOM for ``--dump-dom``)."""
    proc = await asyncio.create_subprocess_exec(
        *chromium_args(profile),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("chromium did not finish in time") from None
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-800:]}"
    return out.decode(errors="replace")


# -- a status provider from real pieces --------------------------------------------------------------
def real_provider(
    health: HealthModel, key: NodeKey, started: float | None = None
) -> Callable[[], dict[str, Any]]:
    """A snapshot in the shape of ``Daemon.status_snapshot()`` (docs/ARCHITECTURE.md), assembled
    from a real HealthModel and node key; peers and archive figures are sample values."""
    t0 = started if started is not None else time.time() - 3725

    def provider() -> dict[str, Any]:
        now = time.time()
        return {
            "version": "0.1.0",
            "enode": f"enode://{key.public.hex()}@0.0.0.0:30303",
            "uptime_s": now - t0,
            "started_at": t0,
            "health": health.snapshot(),
            "peer_count": 2,
            "peers": [
                {
                    "enode": "enode://aa@192.168.1.23:51234",
                    "client": "StatusIM/v0.78.0/android-arm64/go1.13",
                    "protocol": "shh/6",
                    "inbound": True,
                    "address": "192.168.1.23:51234",
                    "connected_s": 600,
                },
                {
                    "enode": "enode://bb@10.0.0.9:30303",
                    "client": "<script>alert(1)</script>",
                    "protocol": "shh/6",
                    "inbound": False,
                    "address": "10.0.0.9:30303",
                    "connected_s": 5,
                },
            ],
            "archive": {
                "backend": "sqlite",
                "count": 12345,
                "bytes": 48_000_000,
                "oldest_sent": now - 86400 * 3,
                "newest_sent": now - 5,
                "bytes_written_since_start": 1_200_000,
                "reason": None,
            },
            "retention": {
                "max_age_s": 30 * 86400,
                "max_count": 0,
                "max_bytes": 8_000_000_000,
                "min_free_disk_bytes": 256_000_000,
            },
            "disk": {"path": "/var/lib/pimail", "free_bytes": 20_500_000_000, "total_bytes": 31_000_000_000},
            "clock": {
                "trusted": True,
                "mode": "auto",
                "source": "timesyncd",
                "now": now,
                "trusted_since": t0 + 20,
            },
            "counters": {"envelopes_in": 5310, "envelopes_out": 10022, "archived": 5290, "requests": 17},
            "loop_lag_ms": 1.7,
            "listen": "0.0.0.0:30303",
            "data_dir": "/var/lib/pimail",
            "mailserver_password": "must-not-leak",
        }

    return provider
