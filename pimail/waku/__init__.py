"""Waku v0 and v1 (status-go waku/0, waku/1): thin adapters over the shared envelope core."""
