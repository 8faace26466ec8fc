"""Cryptographic primitives shared by RLPx and Whisper (all from coincurve and pycryptodome)."""
