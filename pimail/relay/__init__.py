"""The one envelope core shared by shh/6 and waku/x: pool, validation, archive hook, confirmations,
forwarding scheduler. Protocol-neutral; per-peer requirements are data the adapters fill in."""
