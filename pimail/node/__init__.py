"""The node: peers, the asyncio server and dialer (the only I/O glue), envelope relay."""
