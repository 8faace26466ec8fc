"""Whisper v6 (shh/6): envelopes, PoW, bloom, payloads and the sub-protocol (PROTOCOL.md §3)."""
