"""The QUIC engines (qh3, aioquic) behind :mod:`.quic`: configuration, connections,
and the few engine internals tvcfs relies on, all in this one module.

Both engines are sans-I/O ``QuicConnection`` state machines; :mod:`.quic` drives
them from trio through their public API (``connect``, ``receive_datagram``,
``datagrams_to_send``, ``next_event``, ``get_timer``, ``handle_timer``,
``send_stream_data``, ``QuicConfiguration`` including ``session_ticket``, and the
connection's ``session_ticket_fetcher`` / ``session_ticket_handler`` for 0-RTT).
Where no public API exists, the internals used are listed in
:data:`INTERNALS` and checked by :func:`check_internals` (run by
``tests/test_quic_engines.py``, which fails loudly, naming the attribute, when an
engine release changes them):

* **qh3 client** (:func:`qh3_client_class`, one documented subclass of
  ``qh3.quic.connection.QuicConnection``): it overrides ``_create_tls`` to adjust
  the TLS bridge qh3 has just built, before its ClientHello is generated:

  - qh3 advertises a hard-coded ``max_udp_payload_size`` of 1472 (RFC 9000
    §18.2), which caps what the server sends at 1472-byte datagrams whatever
    ``max_datagram_size`` says (~100 MB/s on loopback instead of ~690). The
    subclass re-encodes the transport-parameters extension
    (``bridge.tls.handshake_extensions``) with the configured size.
  - qh3 offers the hybrid X25519+ML-KEM-768 key share by default (~5 ms of key
    generation per ClientHello here); tvcfs pins peers by peer ID, so it offers
    plain X25519 unless ``QuicSettings.post_quantum``: the subclass removes the
    hybrid group from ``bridge.tls._supported_groups`` (qh3 has no option for it).

* **aioquic**: the server's certificate (for the peer-ID pin) is
  ``connection.tls._peer_certificate`` and a stream's unsent backlog
  ``connection._streams[id].sender._buffer`` (qh3 has public ``get_peercert`` and
  ``get_send_buffer_size`` for these).
"""

from __future__ import annotations

import importlib
import ssl

__all__ = ["ALPN", "ENGINES", "Engine", "EngineChanged", "INTERNALS", "check_internals",
           "engine", "qh3_client_class"]

ALPN = "tvcfs/1"
ENGINES = ("qh3", "aioquic")
CID_LEN = 8


class EngineChanged(RuntimeError):
    """An engine no longer has an internal tvcfs relies on (see :data:`INTERNALS`)."""


# (engine, dotted path from the engine package or an object, what it is for)
INTERNALS = {
    "qh3": [
        ("quic.connection.QuicConnection._create_tls",
         "the qh3 client subclass adjusts the TLS bridge this returns"),
        ("quic.tls_bridge.QuicTlsBridge.serialize_transport_parameters",
         "re-encoded with the configured max_udp_payload_size"),
        ("bridge.tls.handshake_extensions", "where the transport parameters travel"),
        ("bridge.tls._supported_groups", "the X25519+ML-KEM-768 group is removed from it"),
        ("tls.Group.X25519ML768", "the hybrid group's code"),
        ("tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS", "the extension's code"),
        ("quic.packet.pull_quic_transport_parameters", "decoding transport parameters"),
        ("quic.packet.push_quic_transport_parameters", "encoding transport parameters"),
        ("_hazmat.pull_quic_header", "demultiplexing a new connection's Initial packet"),
    ],
    "aioquic": [
        ("connection.tls._peer_certificate", "the server certificate (peer-ID pin)"),
        ("connection._streams", "a stream's send backlog (back-pressure)"),
        ("stream.sender._buffer", "a stream's send backlog (back-pressure)"),
    ],
}


def _lookup(root, dotted: str):
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _resolve(package: str, dotted: str):
    """``package.dotted``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            mod = importlib.import_module(".".join([package, *parts[:i]]))
        except ImportError:
            continue
        return _lookup(mod, ".".join(parts[i:])) if parts[i:] else mod
    raise ImportError(f"no module {package}.{parts[0]}")


def check_internals(name: str, *, bridge=None, connection=None, stream=None) -> None:
    """Check that engine ``name`` still has every internal in :data:`INTERNALS`.

    Module paths are checked on the installed package; ``bridge.…`` (qh3: a TLS
    bridge), ``connection.…`` and ``stream.…`` (aioquic: a connection and one of
    its streams) on the live objects given. Raises :class:`EngineChanged` naming
    the missing attribute and what tvcfs uses it for."""
    pkg = importlib.import_module(name)
    for dotted, why in INTERNALS[name]:
        head, _, rest = dotted.partition(".")
        roots = {"bridge": bridge, "connection": connection, "stream": stream}
        try:
            if head in roots:
                if roots[head] is None:
                    continue
                _lookup(roots[head], rest)
            else:
                _resolve(name, dotted)
        except (AttributeError, ImportError) as e:
            version = getattr(pkg, "__version__", "?")
            raise EngineChanged(
                f"{name} {version} no longer has {dotted} ({e}); tvcfs uses it: {why}. "
                "Update tvcfs/transport/engines.py for this release, or pin the "
                "previous one") from None


# ------------------------------------------------------------------ qh3 client
_QH3_CLIENT = None


def qh3_client_class():
    """The qh3 client connection class tvcfs uses (see the module docstring):
    ``QuicConnection`` with ``_create_tls`` adjusting the bridge qh3 builds —
    ``max_udp_payload_size`` = ``configuration.max_datagram_size`` when larger
    than 1472, and no X25519+ML-KEM-768 group when
    ``configuration.tvcfs_post_quantum`` is False."""
    global _QH3_CLIENT
    if _QH3_CLIENT is None:
        from qh3._hazmat import Buffer
        from qh3.quic.connection import QuicConnection
        from qh3.quic.packet import pull_quic_transport_parameters, push_quic_transport_parameters
        from qh3.tls import ExtensionType, Group

        class TvcfsQh3Client(QuicConnection):
            """qh3 client: large datagrams from the server, optional post-quantum share."""

            def _create_tls(self, remote_source_cid):
                bridge = super()._create_tls(remote_source_cid)
                cfg = bridge.configuration
                ctx = bridge.tls
                if not getattr(cfg, "tvcfs_post_quantum", True):
                    # X25519 alone: no ML-KEM-768 key pair per ClientHello
                    ctx._supported_groups = [g for g in ctx._supported_groups
                                             if g != Group.X25519ML768]
                size = cfg.max_datagram_size
                if size > 1472:
                    exts = []
                    for kind, data in ctx.handshake_extensions:
                        if kind == ExtensionType.QUIC_TRANSPORT_PARAMETERS:
                            params = pull_quic_transport_parameters(Buffer(data=data))
                            params.max_udp_payload_size = size
                            buf = Buffer(capacity=len(data) + 64)
                            push_quic_transport_parameters(buf, params)
                            data = buf.data
                        exts.append((kind, data))
                    ctx.handshake_extensions = exts
                return bridge

        _QH3_CLIENT = TvcfsQh3Client
    return _QH3_CLIENT


# ------------------------------------------------------------------ engines
class Engine:
    """The few places where qh3 and aioquic differ (``name``: "qh3" or "aioquic").

    Raises ``ValueError`` for another name."""

    def __init__(self, name: str):
        if name not in ENGINES:
            raise ValueError(f"unknown QUIC engine {name!r}; choose from {ENGINES}")
        self.name = name
        self.configuration = importlib.import_module(f"{name}.quic.configuration")
        self.connection = importlib.import_module(f"{name}.quic.connection")
        self.events = importlib.import_module(f"{name}.quic.events")
        self.packet = importlib.import_module(f"{name}.quic.packet")
        ev = self.events
        self.StreamDataReceived = ev.StreamDataReceived
        self.StreamReset = ev.StreamReset
        self.StopSendingReceived = getattr(ev, "StopSendingReceived", ())
        self.HandshakeCompleted = ev.HandshakeCompleted
        self.ConnectionTerminated = ev.ConnectionTerminated

    def make_config(self, settings, *, is_client: bool, host: str, identity=None,
                    rcvbuf: int | None = None, session_ticket=None):
        """A ``QuicConfiguration`` from ``settings`` (:class:`~.quic.QuicSettings`);
        ``session_ticket``: a client's ticket for resuming (0-RTT)."""
        max_data, max_stream_data = settings.max_data, settings.max_stream_data
        if rcvbuf:
            # never let the peer have more in flight than our socket can queue: a
            # datagram dropped for a full receive buffer costs a loss recovery and
            # a congestion-window cut (RFC 9002) — measured: ~1000 drops and half
            # the throughput for a 1 GB clone with 8 MiB buffers and 64 MiB windows
            cap = max(512 * 1024, rcvbuf // 2)  # Linux reports twice what it accounts
            max_data, max_stream_data = min(max_data, cap), min(max_stream_data, cap)
        kw = dict(
            is_client=is_client,
            alpn_protocols=[ALPN],
            max_datagram_size=settings.datagram_size_for(host, self.name),
            max_data=max_data,
            max_stream_data=max_stream_data,
            idle_timeout=settings.idle_timeout,
        )
        if settings.initial_rtt is not None:
            kw["initial_rtt"] = settings.initial_rtt
        if self.name == "aioquic":
            kw["congestion_control_algorithm"] = settings.congestion_control
        else:
            kw["probe_datagram_size"] = False
        if is_client:
            # The server certificate is self-signed: no CA check, the peer ID pin
            # (checked after the handshake) replaces it. The engine still checks
            # the CertificateVerify signature, i.e. possession of the key.
            kw["verify_mode"] = ssl.CERT_NONE
            kw["server_name"] = "tvcfs"
            if session_ticket is not None:
                kw["session_ticket"] = session_ticket
        cfg = self.configuration.QuicConfiguration(**kw)
        if is_client and self.name == "qh3":
            from qh3.tls import SignatureAlgorithm as SA

            cfg.tvcfs_post_quantum = settings.post_quantum
            # qh3 leaves EdDSA out of the client's list by default; node keys are Ed25519.
            cfg.signature_algorithms = [
                SA.ED25519,
                SA.ECDSA_SECP256R1_SHA256,
                SA.RSA_PSS_RSAE_SHA256,
                SA.RSA_PKCS1_SHA256,
            ]
        if identity is not None and not is_client:
            if self.name == "qh3":
                from qh3._hazmat import Certificate, Ed25519PrivateKey

                cfg.certificate = Certificate(identity.certificate_der)
                cfg.private_key = Ed25519PrivateKey(identity.private_key_der())
            else:
                from cryptography import x509

                cfg.certificate = x509.load_der_x509_certificate(identity.certificate_der)
                cfg.private_key = identity.private_key
        return cfg

    def new_client(self, cfg, ticket_handler=None):
        """A client connection; ``ticket_handler(ticket)`` receives the server's
        session tickets."""
        cls = qh3_client_class() if self.name == "qh3" else self.connection.QuicConnection
        return cls(configuration=cfg, session_ticket_handler=ticket_handler)

    def new_server(self, cfg, odcid: bytes, tickets=None):
        """A server connection for a client whose Initial named ``odcid``;
        ``tickets`` (:class:`~.quic.ServerTickets`) issues and redeems session
        tickets (resumption and 0-RTT)."""
        kw = {}
        if tickets is not None:
            kw = dict(session_ticket_fetcher=tickets.pop, session_ticket_handler=tickets.add)
        return self.connection.QuicConnection(
            configuration=cfg, original_destination_connection_id=odcid, **kw)

    def initial_dcid(self, data: bytes) -> bytes | None:
        """Destination CID of a client Initial packet, or None if ``data`` isn't one."""
        if len(data) < 1200 or not data[0] & 0x80:
            return None
        try:
            if self.name == "qh3":
                from qh3._hazmat import pull_quic_header

                h = pull_quic_header(data, 0, CID_LEN)
                if h[1] != int(self.packet.QuicPacketType.INITIAL):
                    return None
                return h[3]
            from aioquic.buffer import Buffer

            h = self.packet.pull_quic_header(Buffer(data=data), host_cid_length=CID_LEN)
            if h.packet_type != self.packet.QuicPacketType.INITIAL:
                return None
            return h.destination_cid
        except Exception:
            return None

    def peer_certificate_der(self, quic) -> bytes | None:
        """The peer's certificate (DER), or None (none sent: e.g. a resumed session)."""
        if self.name == "qh3":
            cert = quic.get_peercert()
            return None if cert is None else cert.public_bytes()
        from cryptography.hazmat.primitives import serialization

        cert = quic.tls._peer_certificate  # aioquic has no public accessor (INTERNALS)
        return None if cert is None else cert.public_bytes(serialization.Encoding.DER)

    def send_backlog(self, quic, stream_id: int) -> int:
        """Bytes of ``stream_id`` the engine still holds to send (qh3: unsent; aioquic: unacked)."""
        if self.name == "qh3":
            return quic.get_send_buffer_size(stream_id)
        stream = quic._streams.get(stream_id)  # no public accessor (INTERNALS)
        return 0 if stream is None else len(stream.sender._buffer)


_ENGINE_CACHE: dict[str, Engine] = {}


def engine(name: str) -> Engine:
    """The :class:`Engine` named ``name`` (cached). Raises ``ValueError``."""
    e = _ENGINE_CACHE.get(name)
    if e is None:
        e = _ENGINE_CACHE[name] = Engine(name)
    return e
