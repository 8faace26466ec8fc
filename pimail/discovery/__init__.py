"""Node discovery v4 (devp2p discv4 with EIP-8 and EIP-868) and Ethereum Node Records (EIP-778).

Rooms, lowest first: ``wire`` (sans-I/O packet codec), ``enr`` (node records), ``table`` (the
Kademlia table and the lookup algorithm, knowing nothing of packets), ``nodedb`` (the persistent node
database), ``udp`` (the asyncio datagram transport: endpoint proof, reply matching, limits) and
``service`` (bootstrap, refresh, revalidation and persistence loops around them).
"""
