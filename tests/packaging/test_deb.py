"""The .deb (packaging/): the one wheel lock, the maintainer scripts, and a real amd64 build whose
file list, modes, control fields and conffiles are checked. Installing it into a fresh Debian root
(and the arm64 package under qemu-user) is `make deb-test`, too slow for every push."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
DEB = PACKAGING / "deb"
LOCK = PACKAGING / "requirements.lock"
MACHINES = {"x86_64", "aarch64"}
PYTAGS = {"311", "313"}  # bookworm's and trixie's CPython
VENV = "opt/pimail/venv"
SITE = f"{VENV}/lib/python3.11/site-packages"


def requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_the_one_wheel_lock_covers_pyproject_on_every_machine() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = requirement_names(project["dependencies"] + project["optional-dependencies"]["gpio"])
    pinned = {}
    for line in LOCK.read_text().splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z0-9-]+)==(\S+)((?: --hash=sha256:[0-9a-f]{64})+)  # ([a-z0-9_ -]+)", line)
        assert m, f"lock line is not 'name==version --hash=sha256:… # machines': {line}"
        tags = set(m.group(4).split())
        hashes = m.group(3).split()
        # a pure wheel serves every machine; a binary one needs a hash for each machine and
        # interpreter we build for (an abi3 wheel serves both interpreters with one hash), except
        # lgpio, whose cp313 build comes from its pinned sdist
        binary = {f"{mach}-cp{t}" for mach in MACHINES for t in PYTAGS}
        if m.group(1) == "lgpio":
            assert tags == {f"{mach}-cp311" for mach in MACHINES} | {"sdist"}, line
        else:
            assert tags == {"any"} or tags == binary, f"{m.group(1)}: wheels for {sorted(tags)} only"
        assert 1 <= len(hashes) <= len(tags), line
        pinned[m.group(1)] = m.group(2)
    missing = wanted - set(pinned)
    assert not missing, f"stale lock (run packaging/wheels-lock.sh): lacks {sorted(missing)}"
    # 0.0.0.2 is the do-nothing stub pip picks when the manylinux_2_34 tag is not offered.
    assert pinned["lgpio"] == "0.2.2.0"


def locked_names() -> set[str]:
    lines = LOCK.read_text().splitlines()
    return {line.split("==")[0] for line in lines if line and not line.startswith("#")}


def not_at_runtime() -> set[str]:
    m = re.search(r'^NOT_AT_RUNTIME="([^"]*)"', (PACKAGING / "wheels-lock.sh").read_text(), re.M)
    assert m, "wheels-lock.sh names the declared-but-unused dependencies in NOT_AT_RUNTIME"
    return set(m.group(1).split())


def runtime_closure() -> set[str]:
    """pimail's runtime requirements (with the [gpio] extra) and theirs, transitively, as the
    installed distributions declare them (markers evaluated for Linux, no extras below the top)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(s) for s in project["dependencies"] + project["optional-dependencies"]["gpio"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        # lgpio's marker is for the Pi; every other marker is judged for this (Linux) host.
        if name in seen or (req.marker and name != "lgpio" and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            assert name == "lgpio", f"{name} is a runtime dependency but not installed in the test venv"
            continue  # lgpio (aarch64 only in the venv) has no dependencies
        todo.extend(Requirement(r) for r in requires)
    return seen


def test_the_lock_holds_nothing_the_runtime_does_not_need() -> None:
    closure = runtime_closure()
    unused = not_at_runtime()
    assert unused <= closure, f"NOT_AT_RUNTIME names {sorted(unused - closure)}, which nothing requires"
    extra = locked_names() - (closure - unused)
    assert not extra, f"the lock ships {sorted(extra)} the runtime does not need"
    missing = (closure - unused) - locked_names()
    assert not missing, f"the lock lacks {sorted(missing)} (run packaging/wheels-lock.sh)"


def test_the_dependencies_left_out_of_the_lock_are_never_imported() -> None:
    # Import every pimail module, then look for the left-out packages among the loaded modules.
    code = (
        "import importlib, pkgutil, sys, pimail\n"
        "for m in pkgutil.walk_packages(pimail.__path__, 'pimail.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "import sqlite_utils, gpiozero, colorzero\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(out.stdout.split())
    assert "pimail" in loaded and "sqlite_utils" in loaded
    modules = {"pip": {"pip"}, "setuptools": {"setuptools", "pkg_resources"}}
    for name in not_at_runtime():
        assert not (modules.get(name, {name}) & loaded), f"pimail imports {name}, left out of the lock"


def test_there_is_one_lock_and_the_image_uses_the_package() -> None:
    tracked = subprocess.run(["git", "ls-files", "*.lock", "**/*.lock"], cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=60).stdout.split()
    assert tracked == [str(LOCK.relative_to(REPO))]
    build = (REPO / "image/build.sh").read_text()
    app = (REPO / "image/stages/app.sh").read_text()
    assert "packaging/deb/build.sh\" arm64" in build
    assert "dpkg -i /tmp/pimail.deb" in app
    assert not re.search(r"\bpip\b|wheel", app), "the image must not install pimail a second way"
    assert "LOCK" in (DEB / "build.sh").read_text()


def packaging_scripts() -> list[Path]:
    scripts = [*sorted(PACKAGING.rglob("*.sh")), DEB / "postinst", DEB / "prerm", DEB / "postrm"]
    return [p for p in scripts if p.name != "lib.sh"]


def test_shellcheck_is_clean_on_the_maintainer_and_build_scripts() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing (scripts/ensure-deps test installs it)"
    scripts = packaging_scripts()
    names = {p.name for p in scripts}
    assert {"build.sh", "test.sh", "wheels-lock.sh", "postinst", "prerm", "postrm"} <= names
    proc = subprocess.run([shellcheck, "-x", *map(str, scripts)], cwd=PACKAGING, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in scripts:
        assert os.access(path, os.X_OK), f"{path.relative_to(REPO)} is not executable"


def test_maintainer_scripts_follow_the_debian_conventions() -> None:
    postinst = (DEB / "postinst").read_text()
    prerm = (DEB / "prerm").read_text()
    postrm = (DEB / "postrm").read_text()
    # start/restart only where systemd runs, through deb-systemd-invoke (which asks policy-rc.d)
    assert "[ -d /run/systemd/system ]" in postinst and "deb-systemd-invoke $_action" in postinst
    assert "systemctl start" not in postinst + prerm + postrm
    assert "systemd-sysusers" in postinst and "deb-systemd-helper enable" in postinst
    # stop on remove only; an upgrade restarts from the new postinst
    assert '[ "$1" = remove ]' in prerm and "deb-systemd-invoke stop" in prerm
    # purge: says so, then deletes; remove: keeps
    purge = postrm.split('if [ "$1" = purge ]; then', 1)[1]
    assert purge.index("echo") < purge.index("-delete")
    remove = postrm.split('if [ "$1" = purge ]; then', 1)[0]
    assert "-delete" not in remove and "rm -rf" not in postrm


def test_build_refuses_an_unknown_architecture_with_one_line() -> None:
    proc = subprocess.run([str(DEB / "build.sh"), "armhf"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "packaging: error: no wheels for Debian architecture 'armhf' (built: amd64 arm64)"
    )


def test_a_second_build_on_the_same_cache_waits_for_the_first(tmp_path: Path) -> None:
    import fcntl

    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, PIMAIL_DEB_DIST=str(tmp_path / "dist"), PIMAIL_DEB_CACHE=str(cache))
    with open(cache / ".build.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a first build is running
        proc = subprocess.Popen([str(DEB / "build.sh"), "amd64"], stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()  # blocks until the build says something
            assert "another build is using" in line and "waiting for it" in line
            assert proc.poll() is None  # and it waits: nothing of the stage was touched yet
            assert not (cache / "stage-amd64").exists()
        finally:
            os.killpg(proc.pid, 9)  # the script and its waiting flock
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def amd64_deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    for tool in ("dpkg-deb", "python3.11"):
        assert shutil.which(tool), f"{tool} is missing (Debian 12: apt-get install dpkg python3)"
    tmp = tmp_path_factory.mktemp("deb")
    env = dict(os.environ, PIMAIL_DEB_DIST=str(tmp / "dist"), PIMAIL_DEB_CACHE=str(tmp / "cache"),
               PIMAIL_DEB_COMPRESSION="gzip")
    proc = subprocess.run([str(DEB / "build.sh"), "amd64", "0.1.0~ci1"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    deb = Path(proc.stdout.strip().splitlines()[-1])
    assert deb == tmp / "dist" / "pimail_0.1.0~ci1_amd64.deb"
    yield deb


def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}


def control_file(deb: Path, name: str) -> str:
    data = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(f"./{name}")
        assert member is not None, name
        return member.read().decode()


def test_file_list_owners_and_modes(amd64_deb: Path) -> None:
    files = members(amd64_deb)
    for path, mode in {
        f"{VENV}/bin/pimail": 0o755, f"{VENV}/pyvenv.cfg": 0o644,
        "lib/systemd/system/pimail.service": 0o644, "usr/lib/sysusers.d/pimail.conf": 0o644,
        "etc/pimail/pimail.toml": 0o644, "usr/share/doc/pimail/copyright": 0o644,
        "usr/share/doc/pimail/changelog.gz": 0o644, "usr/share/man/man1/pimail.1.gz": 0o644,
        "usr/share/lintian/overrides/pimail": 0o644,
    }.items():
        assert path in files, path
        assert files[path].mode == mode, f"{path}: {oct(files[path].mode)}"
    assert files["usr/bin/pimail"].issym() and files["usr/bin/pimail"].linkname == f"/{VENV}/bin/pimail"
    assert files[f"{VENV}/bin/python3"].linkname == "/usr/bin/python3.11"
    for name, m in files.items():
        assert (m.uname, m.gname) == ("root", "root"), name
        if m.isdir():
            assert m.mode == 0o755, name
        top = name.split("/")[0]
        assert top in {"", ".", "etc", "lib", "opt", "usr"}, name
        assert not name.startswith(("var/", "etc/systemd", "usr/local")), name
        if name.startswith(SITE) and m.isfile():
            assert m.mode == 0o644, f"{name} is {oct(m.mode)}: nothing in site-packages is a program"
    # the systemd files and the config are the repo's own, unchanged
    for path, source in {
        "lib/systemd/system/pimail.service": "systemd/pimail.service",
        "usr/lib/sysusers.d/pimail.conf": "systemd/pimail.conf",
        "lib/udev/rules.d/60-pimail-gpio.rules": "packaging/deb/60-pimail-gpio.rules",
    }.items():
        assert files[path].size == (REPO / source).stat().st_size, path
    # the locked wheels for this machine, no pip-installed launchers with the build host's shebang
    assert f"{SITE}/_lgpio.cpython-311-x86_64-linux-gnu.so" in files
    assert not any(n.startswith(f"{SITE}/bin/") for n in files)
    assert sorted(n for n in files if n.startswith(f"{VENV}/bin/")) == [
        f"{VENV}/bin/pimail", f"{VENV}/bin/python", f"{VENV}/bin/python3", f"{VENV}/bin/python3.11"]


def test_bytecode_is_shipped_for_the_installed_paths(amd64_deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(amd64_deb), str(tmp_path)], check=True)
    pyc = tmp_path / SITE / "pimail/__pycache__/__init__.cpython-311.pyc"
    header = pyc.read_bytes()[:16]
    assert int.from_bytes(header[4:8], "little") == 0b01, "not an unchecked hash-based pyc"
    assert f"/{SITE}/pimail/__init__.py".encode() in pyc.read_bytes()
    launcher = (tmp_path / VENV / "bin/pimail").read_text()
    assert launcher.startswith(f"#!/{VENV}/bin/python3\n") and "from pimail.cli import main" in launcher
    man = gzip.decompress((tmp_path / "usr/share/man/man1/pimail.1.gz").read_bytes()).decode()
    for command in ("run", "init", "enode", "pair", "status", "doctor"):
        assert f".SS {command}\n" in man, command


def test_control_conffiles_and_scripts(amd64_deb: Path) -> None:
    control = control_file(amd64_deb, "control")
    fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", control, re.M))
    assert fields["Package"] == "pimail" and fields["Architecture"] == "amd64"
    assert fields["Version"] == "0.1.0~ci1"
    depends = {d.split()[0] for d in fields["Depends"].split(", ")}
    assert {"python3.11", "systemd", "init-system-helpers", "libc6"} <= depends
    assert not any(d.startswith("python3-") for d in depends), "no system Python packages"
    assert int(fields["Installed-Size"]) > 10_000
    assert control_file(amd64_deb, "conffiles").split() == ["/etc/pimail/pimail.toml"]
    for script in ("postinst", "prerm", "postrm"):
        assert control_file(amd64_deb, script) == (DEB / script).read_text()
    md5sums = control_file(amd64_deb, "md5sums")
    assert "etc/pimail/pimail.toml" in md5sums and f"{SITE}/pimail/cli/__init__.py" in md5sums


def test_the_packaged_config_is_the_commented_sample(amd64_deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(amd64_deb), str(tmp_path)], check=True)
    packaged = (tmp_path / "etc/pimail/pimail.toml").read_text()
    assert packaged == (REPO / "pimail.toml").read_text()
    assert packaged.count("\n# ") > 50, "the sample's comments must come along"
