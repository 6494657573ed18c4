"""Node identity: key pair, peer ID, self-signed certificate, signed challenges.

Decision (see docs/protocol.md, "Identity"): a node key is **Ed25519**. Both QUIC
engines accept an Ed25519 certificate for the server side of TLS 1.3 (RFC 8446
§4.2.3 ``ed25519`` = 0x0807); qh3's *client* leaves EdDSA out of its advertised
``signature_algorithms`` by default, so :func:`tvcfs.transport.quic` re-enables it
explicitly. The certificate key *is* the node key (no libp2p-tls extension), and the
peer ID follows the libp2p peer-ID spec
(https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md):

    peer_id = multihash(protobuf PublicKey{Type=Ed25519(1), Data=raw 32 bytes})

with the *identity* multihash (code 0x00) because the protobuf is ≤ 42 bytes, so
the public key can be recovered from the peer ID itself; printed in base58btc it
starts with ``12D3KooW`` like every libp2p Ed25519 peer ID. Keys of type ECDSA
P-256 (libp2p KeyType 3, Data = DER SubjectPublicKeyInfo, sha2-256 multihash) are
accepted when *verifying* peers, for interoperability, but never generated.

Client authentication (for push) is done at the application layer, identically over
QUIC and TLS-over-TCP: the server sends a fresh 32-byte nonce; the client answers
with its public key and an Ed25519 signature over
``AUTH_CONTEXT ‖ server_peer_id ‖ nonce`` (see :func:`auth_message`). Binding the
server's peer ID (which the client has pinned and verified in the TLS handshake)
stops a malicious server from relaying the challenge to another server.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from ..encoding.varint import decode_varint, encode_varint
from ..errors import TvcfsError

__all__ = [
    "AUTH_CONTEXT",
    "IdentityError",
    "NodeIdentity",
    "PeerIdMismatch",
    "auth_message",
    "b58decode",
    "b58encode",
    "format_peer_id",
    "parse_peer_id",
    "peer_id_from_certificate_der",
    "peer_id_from_public_key_proto",
    "verify_signature",
]

AUTH_CONTEXT = b"tvcfs-auth-v1\x00"
KEYTYPE_ED25519 = 1
KEYTYPE_ECDSA = 3
_MH_IDENTITY = 0x00
_MH_SHA2_256 = 0x12


class IdentityError(TvcfsError):
    """A key, certificate, peer ID or signature is malformed or does not verify."""


class PeerIdMismatch(IdentityError):
    """The remote's certificate key does not hash to the pinned peer ID."""

    def __init__(self, expected: bytes, actual: bytes):
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"peer ID mismatch: expected {format_peer_id(expected)}, "
            f"server presented {format_peer_id(actual)}"
        )


# ---------------------------------------------------------------- base58btc
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def b58encode(data: bytes) -> str:
    """Base58 (Bitcoin alphabet) encoding of ``data``; leading zero bytes → '1'."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`. Raises :class:`IdentityError` on a bad digit."""
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise IdentityError(f"invalid base58 character {c!r}") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


# ---------------------------------------------------------------- peer IDs
def _public_key_proto(key_type: int, data: bytes) -> bytes:
    # libp2p crypto.pb PublicKey: field 1 varint Type, field 2 bytes Data
    return b"\x08" + encode_varint(key_type) + b"\x12" + encode_varint(len(data)) + data


def _multihash_of_proto(proto: bytes) -> bytes:
    if len(proto) <= 42:
        return bytes([_MH_IDENTITY]) + encode_varint(len(proto)) + proto
    return bytes([_MH_SHA2_256, 32]) + hashlib.sha256(proto).digest()


def _proto_of_public_key(pub) -> bytes:
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _public_key_proto(KEYTYPE_ED25519, raw)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        der = pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return _public_key_proto(KEYTYPE_ECDSA, der)
    raise IdentityError(f"unsupported key type {type(pub).__name__}")


def _public_key_from_proto(proto: bytes):
    """Parse a libp2p PublicKey protobuf into a cryptography public key."""
    try:
        if proto[0] != 0x08:
            raise ValueError
        key_type = proto[1]
        if proto[2] != 0x12:
            raise ValueError
        length, i = decode_varint(proto, 3, max_bytes=5)
        data = proto[i : i + length]
        if len(data) != length or i + length != len(proto):
            raise ValueError
    except (IndexError, ValueError):
        raise IdentityError("malformed libp2p PublicKey protobuf") from None
    try:
        if key_type == KEYTYPE_ED25519:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        if key_type == KEYTYPE_ECDSA:
            pub = serialization.load_der_public_key(data)
            if isinstance(pub, ec.EllipticCurvePublicKey):
                return pub
    except ValueError as e:
        raise IdentityError(f"bad public key: {e}") from None
    raise IdentityError(f"unsupported libp2p key type {key_type}")


def peer_id_from_public_key_proto(proto: bytes) -> bytes:
    """Peer ID (binary multihash) of a libp2p PublicKey protobuf.

    Raises :class:`IdentityError` if ``proto`` is not a supported public key.
    """
    _public_key_from_proto(proto)  # validates
    return _multihash_of_proto(proto)


def peer_id_from_certificate_der(der: bytes) -> bytes:
    """Peer ID of the key in an X.509 certificate (DER bytes).

    Raises :class:`IdentityError` for unparsable certificates or key types other
    than Ed25519 / ECDSA.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        pub = cert.public_key()
    except ValueError as e:
        raise IdentityError(f"bad certificate: {e}") from None
    return _multihash_of_proto(_proto_of_public_key(pub))


def format_peer_id(peer_id: bytes) -> str:
    """Text form of a binary peer ID: base58btc of the multihash (libp2p legacy form)."""
    return b58encode(peer_id)


def parse_peer_id(text: str) -> bytes:
    """Binary multihash from a base58btc peer ID (``12D3KooW…`` or ``Qm…``).

    Raises :class:`IdentityError` if the text is not a well-formed multihash.
    """
    mh = b58decode(text.strip())
    if len(mh) < 2:
        raise IdentityError(f"peer ID too short: {text!r}")
    code, length = mh[0], mh[1]
    if code == _MH_IDENTITY:
        if length != len(mh) - 2:
            raise IdentityError(f"bad identity multihash in peer ID {text!r}")
        _public_key_from_proto(mh[2:])
    elif code == _MH_SHA2_256:
        if length != 32 or len(mh) != 34:
            raise IdentityError(f"bad sha2-256 multihash in peer ID {text!r}")
    else:
        raise IdentityError(f"unsupported multihash code {code:#x} in peer ID {text!r}")
    return mh


def auth_message(server_peer_id: bytes, nonce: bytes) -> bytes:
    """Bytes a client signs to authenticate: ``AUTH_CONTEXT ‖ len ‖ server_peer_id ‖ nonce``."""
    return AUTH_CONTEXT + bytes([len(server_peer_id)]) + server_peer_id + nonce


def verify_signature(public_key_proto: bytes, message: bytes, signature: bytes) -> bytes:
    """Check ``signature`` over ``message`` by the key in ``public_key_proto``.

    Returns the signer's peer ID (binary multihash). Raises :class:`IdentityError`
    if the key is malformed or the signature does not verify.
    """
    pub = _public_key_from_proto(public_key_proto)
    try:
        if isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(signature, message)
        else:
            pub.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise IdentityError("signature does not verify") from None
    return _multihash_of_proto(public_key_proto)


# ---------------------------------------------------------------- node key
def _damaged_key(path: Path, what: str) -> str:
    return (f"{path} is damaged ({what}): this node's key, and so its peer ID, cannot be read; move the "
            "file away and a new key is made on next use (servers that allow pushes from the old peer ID "
            "must then allow the new one: `tvcfs id` prints it)")


@dataclass
class NodeIdentity:
    """A node's Ed25519 key pair and the derived peer ID and certificate.

    Attributes:
        private_key: the ``cryptography`` Ed25519 private key.
        peer_id: binary multihash (bytes); ``str(identity)`` gives the base58btc form.
        certificate_der: self-signed X.509 certificate (DER bytes), CN = peer ID,
            valid from one day ago for 100 years.
    """

    private_key: ed25519.Ed25519PrivateKey
    peer_id: bytes
    certificate_der: bytes
    public_key_proto: bytes

    @classmethod
    def generate(cls) -> "NodeIdentity":
        """A fresh random identity (not stored)."""
        return cls.from_private_key(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_private_key(cls, key: ed25519.Ed25519PrivateKey) -> "NodeIdentity":
        """Build the identity (peer ID, certificate) around an existing key."""
        proto = _proto_of_public_key(key.public_key())
        peer_id = _multihash_of_proto(proto)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, b58encode(peer_id))])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=36500))
            .sign(key, None)
        )
        return cls(key, peer_id, cert.public_bytes(serialization.Encoding.DER), proto)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> "NodeIdentity":
        """Load the PEM PKCS#8 Ed25519 key at ``path``, creating it (mode 0600) if absent.

        Raises :class:`IdentityError` if the file exists but holds no Ed25519 key
        (the message says what to do).
        """
        path = Path(path)
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), None)
            except ValueError:
                raise IdentityError(_damaged_key(path, "not a PEM private key")) from None
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise IdentityError(_damaged_key(path, "not an Ed25519 private key"))
            return cls.from_private_key(key)
        ident = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ident.private_key_pem())
        os.replace(tmp, path)
        return ident

    def private_key_pem(self) -> bytes:
        """PKCS#8 PEM of the private key (unencrypted)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def private_key_der(self) -> bytes:
        """PKCS#8 DER of the private key (unencrypted)."""
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def certificate_pem(self) -> bytes:
        """PEM of the self-signed certificate."""
        cert = x509.load_der_x509_certificate(self.certificate_der)
        return cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``message``."""
        return self.private_key.sign(message)

    @property
    def peer_id_str(self) -> str:
        """base58btc text of the peer ID (``12D3KooW…``)."""
        return b58encode(self.peer_id)

    def __str__(self) -> str:
        return self.peer_id_str
