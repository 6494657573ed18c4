"""TensorSwap: tvcfs's block exchange over QUIC (qh3 / aioquic driven from trio)
and TLS-over-TCP. See docs/protocol.md.

Modules: :mod:`.quic` (transport, no tvcfs knowledge), :mod:`.tcp`,
:mod:`.identity`, :mod:`.protocol` (sans-I/O messages), :mod:`.channel`,
:mod:`.server`, :mod:`.client`, :mod:`.backend`, :mod:`.ops` (clone, fetch, pull,
push, serve: the repository-level operations behind the CLI verbs).
"""
