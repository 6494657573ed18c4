"""The IPFS HTTP trustless gateway (https://specs.ipfs.tech/http-gateways/trustless-gateway/)
over a repository's blocks: :mod:`~tvcfs.gateway.core` (request semantics: format
negotiation, ``dag-scope``, ``entity-bytes``, the CAR block walk; no HTTP framework) and
:mod:`~tvcfs.gateway.app` (the Starlette ASGI app and its Hypercorn/trio server).
``docs/backends.md`` ("The IPFS network") describes both sides; the client side is the
``gateway`` block backend, :mod:`tvcfs.store.gateway`.

Nothing here is imported by ``import tvcfs``; Starlette and Hypercorn are imported by
:mod:`~tvcfs.gateway.app` only (``pip install 'tvcfs[gateway]'``).
"""
