"""Capability matching and message-id offsets (PROTOCOL.md §2.4)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pimail.devp2p.messages import BASE_PROTOCOL_LENGTH


@dataclass(frozen=True)
class CapabilitySpec:
    """What a local sub-protocol advertises: name, version and how many message ids it uses."""

    name: str
    version: int
    length: int


@dataclass(frozen=True)
class SharedCapability:
    """A capability both sides speak, with its absolute id range ``offset .. offset+length-1``."""

    spec: CapabilitySpec
    offset: int

    def contains(self, msg_id: int) -> bool:
        return self.offset <= msg_id < self.offset + self.spec.length


def match_capabilities(
    local: Sequence[CapabilitySpec], remote: Iterable[tuple[str, int]]
) -> list[SharedCapability]:
    """Shared capabilities sorted by name then version, highest shared version per name, ids from 16."""
    remote_set = set(remote)
    best: dict[str, CapabilitySpec] = {}
    for spec in local:
        if (spec.name, spec.version) in remote_set:
            cur = best.get(spec.name)
            if cur is None or spec.version > cur.version:
                best[spec.name] = spec
    shared: list[SharedCapability] = []
    offset = BASE_PROTOCOL_LENGTH
    for name in sorted(best, key=lambda n: n.encode()):
        spec = best[name]
        shared.append(SharedCapability(spec, offset))
        offset += spec.length
    return shared
