"""The mailserver: history requests (code 126) in every form, paging, bundling, request-complete
(125), limits, access control, mailserver-to-mailserver sync (123/124) and the history client.

PROTOCOL.md §4. The sans-I/O parts (``request``, ``response``, ``limits``, ``syncwire``) never touch
sockets or the event loop; ``server``, ``sync`` and ``client`` are the asyncio glue on top of the
Whisper service and the archive.
"""
