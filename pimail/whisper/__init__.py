"""Whisper v6 (shh/6): the sub-protocol on top of the envelope primitives (PROTOCOL.md §3)."""
