"""Helpers for the image tests: load the Python that lives in image/ (not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


BOOTSETTINGS = load_module("pimail_image_bootsettings", IMAGE / "rootfs/usr/lib/pimail-image/bootsettings.py")


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    """An empty boot partition."""
    d = tmp_path / "boot"
    d.mkdir()
    return d


@pytest.fixture
def targets(tmp_path: Path) -> Any:
    """Where the boot-settings importer installs things, below tmp_path."""
    return BOOTSETTINGS.Targets(
        config=tmp_path / "etc/pimail/pimail.toml",
        authorized_keys=tmp_path / "root/.ssh/authorized_keys",
        wpa_supplicant=tmp_path / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf",
        config_group="no-such-group-here",
    )
MDNSNAME = load_module("pimail_image_mdnsname", IMAGE / "rootfs/usr/lib/pimail-image/mdnsname.py")
