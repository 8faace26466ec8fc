"""The host side of the QEMU boot test (image/test/smokecheck.py): SMOKE-line parsing, the
verdicts on a boot, and the guest-release channel over a real socket."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pimail.crypto.keys import NodeKey
from tests.image.conftest import IMAGE, load_module

sc: Any = load_module("pimail_image_smokecheck", IMAGE / "test/smokecheck.py")

PUB = NodeKey.generate().public.hex()
BOOT1 = {
    "system": "running",
    "boot": "1",
    "boot_id": "1111-aaaa",
    "failed": "",
    "startup": "10.3s (kernel) + 29.8s (userspace) = 40.1s",
    "pimail.active": "active",
    "pimail.type": "notify",
    "pimail.status": "healthy: 0 peers",
    "pimail.watchdog": "30s",
    "pimail.user": "pimail",
    "pimail.active_after": "active",
    "pimail.restarts_after": "0",
    "pimail.journal_errors": "0",
    "ssh.active": "active",
    "avahi-daemon.active": "active",
    "systemd-timesyncd.active": "active",
    "pimail-import-settings.active": "active",
    "pimail-show-qr.active": "active",
    "firstboot.condition": "yes",
    "firstboot.result": "success",
    "firstboot.boot_id": "1111-aaaa",
    "firstboot.journal": "1",
    "hostkeys": "3",
    "machine_id": "0123abcd",
    "root_password": "L",
    "sshd_password_auth": "no",
    "hostname": "pimail",
    "settings.authorized_keys": "1",
    "settings.config_from_boot": "yes",
    "settings.log": "pimail.toml: imported",
    "data.medium": "sd",
    "data.source": "/dev/vda3",
    "data.label": "PIMAILSD",
    "data.size_mb": "2700",
    "data.grown": "2026-11-26T18:00:00Z",
    "data.owner": "pimail",
    "data.log_failures": "0",
    "data.unit_s": "1.2",
    "nodekey.sha256": "deadbeefdeadbeef",
    "config.valid": "yes",
    "watchdog.runtime": "15s",
    "watchdog.device": "/dev/watchdog0",
    "listen": "0.0.0.0:22,0.0.0.0:30303",
    "enode": f"enode://{PUB}@10.0.2.15:30303",
    "enode.lan": f"enode://{PUB}@10.0.2.15:30303",
    "kernel.mb": "340",
    "root.avail_mb": "880",
    "boot.avail_mb": "420",
    "boot.kernel_mb": "70",
    "boot.restored": "yes",
    "kernel.verify": "0",
    "updates.origins": "origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
    "updates.reboot": "false",
    "updates.periodic": "1",
    "updates.timer": "enabled",
    "updates.installed": "installed",
    "data.block_size": "4096",
    "data.bytes_per_inode": "262144",
    "data.reserved": "0",
    "disk.written_mb": "120",
    "disk.size_mb": "4096",
    "tmp.fstype": "tmpfs",
    "firmware.pi3b": "ok",
    "firmware.pi3bplus": "ok",
    "firmware.pi4b": "ok",
    "firmware.zero2w": "ok",
    "firmware.zero2w_43436": "missing:brcmfmac43430b0-sdio.bin",
    "firmware.package": "20250410-2~bpo12+1",
    "pimail.memory_max": "629145600",
    "mem_total": "1048576000",
    "issue.link": "/run/pimail-issue/issue",
    "lastboot.ended": "first",
    "lastboot.previous_lines": "0",
    "lastboot.previous_end": "0",
    "lastboot.status": "first boot (no previous boot recorded)",
    "mdns.unit": "active",
    "mdns.avahi_name": "pimail",
    "mdns.derived": "pimail-1b02",
    "mdns.staged": "pimail-2",
    "mdns.reclaimed": "pimail",
    "mdns.renamed_hostname": "pimail-1b02",
    "mdns.renamed_etc": "pimail-1b02",
    "mdns.renamed_avahi": "pimail-1b02",
    "mdns.renamed_hosts": "127.0.1.1 pimail-1b02",
    "wifi.key_mgmt": "0x502",
    "wifi.pmf": "1",
    "wifi.sae_password": "1",
    "wifi.parse_errors": "0",
    "pimail.ready_us": "117568562",
    "clock.monotonic_us": "244880000",
    "end": "1",
}
RLPX_OK = (True, "handshake ok")


def boot2() -> dict[str, str]:
    values = dict(BOOT1)
    values.update(
        {
            "boot": "2",
            "end": "2",
            "boot_id": "2222-bbbb",
            "firstboot.condition": "no",
            "firstboot.result": "success",
            "firstboot.journal": "0",
            "lastboot.ended": "clean",
            "lastboot.previous_lines": "812",
            "lastboot.previous_end": "1",
            "lastboot.status": "clean shutdown (last log 2026-12-02T14:03:11+0000)",
            "hostname": "pimail-1b02",  # boot 1 staged a conflict; the derived name stays
            "mdns.avahi_name": "pimail-1b02",
        }
    )
    every_boot = {"mdns.unit", "mdns.avahi_name", "mdns.derived"}
    for key in [k for k in values if k.startswith("mdns.") and k not in every_boot]:
        del values[key]  # the staging runs on the first boot only
    return values


def failing(checks: list[Any]) -> list[str]:
    return [c.name for c in checks if c.required and not c.ok]


def test_parse_line_finds_smoke_in_console_noise() -> None:
    assert sc.parse_line("SMOKE: pimail.active=active") == ("pimail.active", "active")
    assert sc.parse_line("[   41.2] systemd[1]: x\r\x1b[0mSMOKE: failed=\r") == ("failed", "")
    assert sc.parse_line("SMOKE: enode=enode://ab@1.2.3.4:30303") == ("enode", "enode://ab@1.2.3.4:30303")
    assert sc.parse_line("SMOKE-LOG: started") is None
    assert sc.parse_line("nothing here") is None


def test_parse_lines_later_value_wins() -> None:
    assert sc.parse_lines(["SMOKE: a=1", "noise", "SMOKE: a=2", "SMOKE: b=x y"]) == {"a": "2", "b": "x y"}


def test_parse_enode_accepts_password_form_and_rejects_junk() -> None:
    key, host, port = sc.parse_enode(f"enode://{PUB}:status-offline-inbox@192.168.1.5:30303")
    assert key == bytes.fromhex(PUB) and host == "192.168.1.5" and port == 30303
    for bad in ("", "enode://abc@1.2.3.4:1", "http://x", f"enode://{PUB}@host"):
        try:
            sc.parse_enode(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_a_good_first_boot_passes() -> None:
    checks = sc.evaluate(BOOT1, 1, RLPX_OK, settings_expected=True)
    assert failing(checks) == []
    assert sc.passed(checks)
    text = sc.format_checks(checks, 1)
    assert "[PASS] real RLPx handshake from the host: handshake ok" in text


def test_each_important_fault_fails_the_boot() -> None:
    faults = {
        "pimail.service READY (Type=notify, active)": {"pimail.active": "activating"},
        "no failed units": {"failed": "pimail.service"},
        "boot finished": {"system": "degraded"},
        "first boot ran (once, this boot)": {"firstboot.journal": "2"},
        "data partition grown to fill the card": {"data.size_mb": "60"},
        "archive on the SD data partition": {"data.owner": "root"},
        "no passwords: root locked, sshd keys only": {"sshd_password_auth": "yes"},
        "system watchdog RuntimeWatchdogSec=15": {"watchdog.runtime": "0"},
        "pimail still up after the handshake": {"pimail.restarts_after": "1"},
        "boot-partition settings imported": {"settings.config_from_boot": "no"},
        "guest reported back": {"end": ""},
        "root has room for a kernel update and a full upgrade": {"root.avail_mb": "291"},
        "boot partition has room for a new kernel and initrd": {"boot.avail_mb": "20"},
        "/boot's kernel and initrd restored from the boot partition, package verifies": {
            "kernel.verify": "2"},
        "unattended-upgrades: security origin only, no automatic reboot, daily": {
            "updates.origins": "origin=Debian,codename=${distro_codename}-security,label=Debian-Security|"
            "origin=Debian,codename=${distro_codename},label=Debian"},
        "data filesystem: 4 KiB blocks, >= 64 KiB per inode, no root reserve": {
            "data.bytes_per_inode": "4096"},
        "/tmp in RAM": {"tmp.fstype": "ext4"},
        "Wi-Fi firmware for Pi 3 B, 3 B+, 4 B, Zero 2 W (BCM43430/1)": {
            "firmware.zero2w": "missing:brcmfmac43430-sdio.raspberrypi,model-zero-2-w.txt"},
        "pimail's MemoryMax fits the board": {"pimail.memory_max": "infinity"},
        "first boot: no previous boot recorded": {"lastboot.ended": "power-loss"},
        "hostname pimail (pimail.local, announced by avahi)": {"mdns.avahi_name": "pimail-2"},
        MDNS_CHECK: {"mdns.reclaimed": "pimail-2"},
        "pimail-data logged no failure (no udevadm settle line)": {"data.log_failures": "1"},
        WIFI_CHECK: {"wifi.key_mgmt": "0x2"},
    }
    for name, change in faults.items():
        values = dict(BOOT1)
        values.update(change)
        assert name in failing(sc.evaluate(values, 1, RLPX_OK, settings_expected=True)), name


MDNS_CHECK = (
    "mDNS conflicts: avahi's rename undone when nobody else has pimail.local; "
    "a derived name taken for good when another host has it"
)
WIFI_CHECK = (
    "Wi-Fi config from wifi.txt joins WPA2, WPA2/WPA3 and WPA3-SAE networks (wpa_supplicant reads it)"
)


def test_mdns_conflict_staging_is_judged_piece_by_piece() -> None:
    for change in (
        {"mdns.renamed_hostname": "pimail-2"},  # avahi's own -2 name, not the derived one
        {"mdns.renamed_etc": "pimail"},  # not kept for the next boot
        {"mdns.renamed_hosts": "127.0.1.1 pimail"},
        {"mdns.derived": "pimail-zz"},
        {"mdns.derived": "", "mdns.renamed_hostname": "", "mdns.renamed_etc": "", "mdns.renamed_avahi": "",
         "mdns.renamed_hosts": "127.0.1.1 "},
    ):
        values = dict(BOOT1)
        values.update(change)
        assert MDNS_CHECK in failing(sc.evaluate(values, 1, RLPX_OK)), change


def test_second_boot_keeps_the_derived_name() -> None:
    name = "hostname pimail-1b02 (pimail-1b02.local, announced by avahi)"
    values = boot2()
    values.update({"hostname": "pimail", "mdns.avahi_name": "pimail"})
    assert failing(sc.evaluate(values, 2, RLPX_OK, previous=BOOT1)) == [name]
    values.update({"hostname": "pimail-1b02", "mdns.avahi_name": "pimail-1b02-2"})
    assert failing(sc.evaluate(values, 2, RLPX_OK, previous=BOOT1)) == [name]


def test_wifi_config_check_needs_sae_and_optional_pmf() -> None:
    for change in (
        {"wifi.pmf": "0"}, {"wifi.sae_password": "0"}, {"wifi.parse_errors": "1"}, {"wifi.key_mgmt": ""}
    ):
        values = dict(BOOT1)
        values.update(change)
        assert failing(sc.evaluate(values, 1, RLPX_OK)) == [WIFI_CHECK], change


def test_boot_to_ready_is_reported_from_both_clocks() -> None:
    # READY at 117.568562 s guest time; the report line with the guest clock at 244.88 s was read
    # by the host 250.0 s after QEMU started: READY came 127.311438 s of guest time earlier.
    seen = {"clock.monotonic_us": 1000.0 + 250.0}
    assert abs(sc.qemu_to_ready(BOOT1, seen, 1000.0) - (250.0 - 127.311438)) < 1e-6
    assert sc.qemu_to_ready(BOOT1, seen, None) is None
    assert sc.qemu_to_ready({**BOOT1, "pimail.ready_us": "0"}, seen, 1000.0) is None
    checks = sc.evaluate(BOOT1, 1, RLPX_OK, qemu_to_ready_s=122.69)
    ready = next(c for c in checks if c.name == "boot to pimail READY=1")
    assert ready.ok and not ready.required
    assert "117.6 s after the kernel started" in ready.detail and "122.7 s after QEMU started" in ready.detail
    unknown = sc.evaluate({**BOOT1, "pimail.ready_us": ""}, 1, RLPX_OK)
    assert not next(c for c in unknown if c.name == ready.name).ok


def test_failed_handshake_fails_and_missing_watchdog_device_only_warns() -> None:
    values = dict(BOOT1)
    values["watchdog.device"] = "none"
    checks = sc.evaluate(values, 1, (False, "ConnectionRefusedError"))
    assert failing(checks) == ["real RLPx handshake from the host"]
    assert "[warn] watchdog device present" in sc.format_checks(checks, 1)


def test_second_boot_must_not_rerun_first_boot_and_keeps_identity() -> None:
    assert failing(sc.evaluate(boot2(), 2, RLPX_OK, previous=BOOT1)) == []
    rerun = boot2()
    rerun.update({"firstboot.condition": "yes", "firstboot.boot_id": "2222-bbbb", "firstboot.journal": "1"})
    assert failing(sc.evaluate(rerun, 2, RLPX_OK, previous=BOOT1)) == ["first boot did not run again"]
    new_key = boot2()
    new_key["nodekey.sha256"] = "0000000000000000"
    assert "identity kept across reboot (node key, machine-id, enode)" in failing(
        sc.evaluate(new_key, 2, RLPX_OK, previous=BOOT1)
    )


def test_probe_refuses_a_bad_or_wrong_port_enode_without_dialing() -> None:
    ok, detail = sc.probe({"enode": "garbage"}, 1, timeout_s=1)
    assert not ok and "not an enode" in detail
    ok, detail = sc.probe({"enode": f"enode://{PUB}@10.0.2.15:30304"}, 1, timeout_s=1)
    assert not ok and "30304" in detail


def test_wait_for_follows_a_growing_log_and_gives_up_when_qemu_is_gone(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("booting\n")

    def later() -> None:
        time.sleep(0.5)
        with log.open("a") as f:
            f.write("SMOKE: awaiting_host=30399\n")

    threading.Thread(target=later).start()
    values = sc.wait_for(log, "awaiting_host", time.monotonic() + 10, None)
    assert values == {"awaiting_host": "30399"}
    # A process that does not exist stands for a QEMU that died: no waiting out the deadline.
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    result: list[object] = []
    hour = time.monotonic() + 3600
    waiter = threading.Thread(target=lambda: result.append(sc.wait_for(log, "end", hour, dead)))
    waiter.start()
    waiter.join(120)  # far less than the hour's deadline: it noticed the dead QEMU
    assert not waiter.is_alive() and result == [None]


def test_release_guest_retries_until_the_guest_acknowledges() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        # The first connection is dropped unanswered (as QEMU does when the guest does not
        # listen yet): the sender must try again and only stop at the "ok".
        conn, _ = srv.accept()
        conn.close()
        conn, _ = srv.accept()
        with conn:
            got.append(conn.recv(100))
            conn.sendall(b"ok\n")

    t = threading.Thread(target=accept)
    t.start()
    assert sc.release_guest(port, "done rlpx=ok")
    t.join(10)
    srv.close()
    assert got == [b"done rlpx=ok\n"]


def test_main_reports_a_silent_guest_and_exits_1(tmp_path: Path, capsys: Any) -> None:
    log = tmp_path / "serial.log"
    log.write_text("kernel panic\n")
    rc = sc.main(
        ["--log", str(log), "--boot", "1", "--node-port", "1", "--control-port", "1",
         "--state", str(tmp_path / "s.json"), "--timeout", "1"]
    )
    assert rc == 1
    assert "never reported back" in capsys.readouterr().out


def test_main_judges_a_recorded_second_boot(tmp_path: Path, capsys: Any) -> None:
    """A complete serial log of boot 2 whose handshake cannot succeed (nothing listens): the
    verdict must name exactly that failure and nothing else."""
    state = tmp_path / "boot1.json"
    state.write_text(json.dumps(BOOT1))
    log = tmp_path / "serial.log"
    log.write_text("".join(f"SMOKE: {k}={v}\n" for k, v in boot2().items()) + "SMOKE: awaiting_host=1\n"
                   + login_banner(BOOT1["enode.lan"]))
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    rc = sc.main(
        ["--log", str(log), "--boot", "2", "--node-port", str(port), "--control-port", str(port),
         "--state", str(state), "--timeout", "5", "--release-attempts", "1"]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "[FAIL] real RLPx handshake from the host" in out
    assert "[PASS] first boot did not run again" in out
    assert out.count("[FAIL]") == 1


def login_banner(text: str, ansi: bool = True) -> str:
    """What agetty prints on the serial console: the issue file (QR as pimail enode --qr draws it)
    and the prompt, with the CR-LF line ends of a tty."""
    from pimail.appliance import qr

    drawing = qr.render_terminal(qr.make_qr(text), ansi=ansi)
    banner = "Debian GNU/Linux 12 pimail ttyAMA0\n\npimail: scan this\n\n" + drawing + text
    return (banner + "\n\npimail login: ").replace("\n", "\r\n")


def test_login_prompt_qr_decodes_the_banner_in_either_drawing_mode() -> None:
    enode = BOOT1["enode.lan"]
    for ansi in (True, False):
        assert sc.login_prompt_qr("[  5.1] kernel noise\r\n" + login_banner(enode, ansi)) == [enode]


def test_login_prompt_qr_ignores_a_code_no_prompt_follows_and_keeps_the_order() -> None:
    from pimail.appliance import qr

    stray = qr.render_terminal(qr.make_qr("enode://stray"), ansi=True).replace("\n", "\r\n")
    first = login_banner("enode://first")
    assert sc.login_prompt_qr(stray + "SMOKE: x=1\r\n") == []
    assert sc.login_prompt_qr(first + stray + login_banner("enode://second")) == ["enode://first", "enode://second"]


def test_login_qr_must_be_the_nodes_enode() -> None:
    name = "the login prompt's QR code is the node's enode"
    assert name not in failing(sc.evaluate(BOOT1, 1, RLPX_OK, login_qr=[BOOT1["enode.lan"]]))
    assert name in failing(sc.evaluate(BOOT1, 1, RLPX_OK, login_qr=[]))
    assert name in failing(sc.evaluate(BOOT1, 1, RLPX_OK, login_qr=[BOOT1["enode.lan"], "enode://old@1.2.3.4:1"]))


def test_second_boot_needs_the_previous_journal_and_a_clean_end() -> None:
    name = "previous boot's journal kept; it ended clean (in pimail status too)"
    for change in ({"lastboot.ended": "power-loss"}, {"lastboot.previous_end": "0"}, {"lastboot.status": ""}):
        values = boot2()
        values.update(change)
        assert name in failing(sc.evaluate(values, 2, RLPX_OK, previous=BOOT1)), change


def test_rlpx_handshake_against_a_real_pimail_node() -> None:
    """The probe the boot test runs, against a pimail node on 127.0.0.1 (not QEMU)."""
    import asyncio

    from pimail.config import NodeConfig, WhisperConfig
    from pimail.node.server import NodeServer
    from pimail.whisper.service import WhisperService

    async def scenario() -> tuple[str, str]:
        key = NodeKey.generate()
        whisper = WhisperService(WhisperConfig(), archive=None, clock_trusted=lambda: False)
        node = NodeServer(key, NodeConfig(listen="127.0.0.1:0"), [whisper])
        await node.start()
        try:
            ok = await sc.rlpx_handshake("127.0.0.1", node.listen_port, key.public, 10)
            other = NodeKey.generate().public
            try:
                await sc.rlpx_handshake("127.0.0.1", node.listen_port, other, 3)
                wrong = "handshake with the wrong key succeeded"
            except Exception as exc:
                wrong = f"{type(exc).__name__}: {exc}"
            return ok, wrong
        finally:
            await node.stop()

    ok, wrong = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "ok" in ok and "session open" in ok and "pimail" in ok
    assert "succeeded" not in wrong
