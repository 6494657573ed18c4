"""TensorSwap: tvcfs's block exchange over QUIC (qh3 / aioquic driven from trio)
and TLS-over-TCP. See docs/protocol.md.

Layers (after aioquic: a protocol core with no I/O, small drivers that move bytes):
:mod:`.protocol` (messages, framing), :mod:`.session` (the server's and client's
sessions, sans-I/O), :mod:`.selection` (what a DAG request selects), :mod:`.ledger`
(fair share between peers); the drivers :mod:`.server`, :mod:`.client`,
:mod:`.wants` over :mod:`.channel`, :mod:`.quic` (QUIC on trio), :mod:`.tickets` (resumption, 0-RTT),
:mod:`.engines` (qh3 / aioquic and their checked internals) and :mod:`.tcp`;
:mod:`.identity`, :mod:`.backend`; :mod:`.peer` (the tvcfs:// remote of the sync
verbs in :mod:`tvcfs.sync`, with the peer reputation) and :mod:`.ops` (serving a
repository: ``tvcfs serve``).
"""
