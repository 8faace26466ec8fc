"""Shared fixtures. Vectors are read from tests/vectors (copied from the protocol reference with
their ``source`` field), never from outside the project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parent / "vectors"


def load_vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


@pytest.fixture
def vectors() -> Any:
    return load_vector
