"""EIP-627 envelope primitives shared by shh/6 and waku: the envelope codec, bloom, PoW, payloads, sealing."""
