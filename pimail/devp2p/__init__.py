"""devp2p base protocol: Hello, capability offsets, snappy, ping/pong, disconnect (PROTOCOL.md §2).

Sans-I/O: ``P2PSession`` turns frame-data into events and messages into frame-data.
"""
