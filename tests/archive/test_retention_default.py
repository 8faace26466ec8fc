"""The archive is size-capped out of the box: ``max_bytes = "50%"`` of the filesystem it lives on
(with ``min_free_disk`` on top), as the design card says; a size or "0" still work as before."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from pimail.archive import open_archive
from pimail.archive.retention import policy_from_config
from pimail.config import ArchiveConfig, Config
from pimail.configfile import ConfigError, load_config, render_config
from pimail.errors import UserError


def test_the_default_cap_is_half_the_filesystem_of_the_data_dir(tmp_path: Path) -> None:
    policy = policy_from_config(ArchiveConfig(), tmp_path)
    total = shutil.disk_usage(tmp_path).total
    assert policy.max_bytes == int(total * 0.5) > 0
    assert policy.min_free_disk_bytes == 256_000_000


def test_a_share_is_measured_where_the_data_dir_will_be(tmp_path: Path) -> None:
    policy = policy_from_config(ArchiveConfig(max_bytes="25%"), tmp_path / "not" / "yet")
    assert policy.max_bytes == int(shutil.disk_usage(tmp_path).total * 0.25)


def test_sizes_and_zero_keep_their_meaning(tmp_path: Path) -> None:
    assert policy_from_config(ArchiveConfig(max_bytes="8GB"), tmp_path).max_bytes == 8_000_000_000
    assert policy_from_config(ArchiveConfig(max_bytes="0"), tmp_path).max_bytes == 0


def test_a_share_does_not_apply_to_postgresql_or_without_a_data_dir(tmp_path: Path) -> None:
    fleet = ArchiveConfig(url="postgresql://u@db/pimail")
    assert policy_from_config(fleet, tmp_path).max_bytes == 0  # the server owns its disk
    sized = ArchiveConfig(url=fleet.url, max_bytes="8GB")
    assert policy_from_config(sized, tmp_path).max_bytes == 8_000_000_000
    assert policy_from_config(ArchiveConfig()).max_bytes == 0


@pytest.mark.parametrize("value", ["150%", "0%", "lots%", "-5%"])
def test_bad_shares_are_one_line_errors_naming_the_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "pimail.toml"
    path.write_text(f'[archive]\nmax_bytes = "{value}"\n')
    with pytest.raises(ConfigError, match=r"pimail.toml:2: .*max_bytes"):
        load_config(path)
    with pytest.raises(UserError, match=r"archive.max_bytes"):
        policy_from_config(ArchiveConfig(max_bytes=value), tmp_path)


def test_the_written_config_and_a_new_archive_carry_the_cap(tmp_path: Path) -> None:
    text = render_config(Config(), "test")
    assert 'max_bytes = "50%"' in text
    sample = (Path(__file__).resolve().parents[2] / "pimail.toml").read_text()
    assert 'max_bytes = "50%"' in sample

    async def stats_cap() -> int:
        archive = open_archive(ArchiveConfig(), tmp_path, None)
        await archive.open()
        try:
            return (await archive.stats()).retention.max_bytes
        finally:
            await archive.close()

    assert asyncio.run(stats_cap()) == int(shutil.disk_usage(tmp_path).total * 0.5)
