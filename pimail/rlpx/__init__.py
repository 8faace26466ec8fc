"""RLPx: the encrypted, authenticated transport under devp2p (PROTOCOL.md §1). Sans-I/O."""
