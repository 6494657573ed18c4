"""Tensor streaming: one tensor of a safetensors file, in order, as its leaves arrive.

:func:`stream_tensor` (``tvcfs.stream_tensor``) reads the safetensors header of
``path`` at revision ``rev`` and then the tensor's bytes, leaf by leaf, each leaf
hashed against its CID before a byte of it is handed over. From a ``tvcfs://``
peer this is two or three byte-range DAG requests on one session (docs/protocol.md,
"DAG requests"): the path's nodes, the file's interior nodes and the first leaf;
the rest of the header when it spans more leaves; then exactly the leaves that
overlap the tensor's byte range, in file order (the interior nodes go in the
request's ``have`` list, so the answer is leaves only). From a local repository
(or a lazy clone, whose block layer fetches missing leaves from its peers,
verified) the leaves are read in the same order.

The bytes are written into one buffer of the tensor's size as they arrive, and
the chunks yielded are read-only views of it, so :meth:`TensorStream.numpy` and
:meth:`TensorStream.torch` cost no further copy.
"""

from __future__ import annotations

import queue
import threading

from .chunking.safetensors import MAX_HEADER, NotSafetensors, parse_header
from .encoding.cid import DAG_CBOR, cid_codec, cid_from_str, cid_str, verify_block
from .errors import InvalidCID, TvcfsError

__all__ = ["TensorStream", "stream_tensor"]

_END = object()

_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                 "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class TensorStream:
    """A tensor's bytes as they arrive (see the module docstring).

    Iterating yields read-only ``memoryview`` chunks, in order, together exactly
    ``nbytes`` bytes; each chunk is part of a leaf already verified against its
    CID. Attributes: ``name``, ``dtype`` (safetensors string, e.g. ``"BF16"``),
    ``shape`` (tuple), ``nbytes``, ``received`` (bytes so far), ``file_cid``.
    :meth:`numpy` / :meth:`torch` read what is left and return the whole tensor.
    Use it as a context manager (or call :meth:`close`) to stop a transfer early.
    Errors (raised while iterating): :class:`~tvcfs.errors.CorruptBlock` (a leaf
    that does not match its CID), :class:`~tvcfs.errors.TvcfsError` (the remote
    lacks a block or refused the request; transport errors).
    """

    def __init__(self, info, file_cid: bytes, chunks):
        self.name = info.name
        self.dtype = info.dtype
        self.shape = tuple(info.shape)
        self.nbytes = info.nbytes
        self.file_cid = file_cid
        self.received = 0
        self._buf = bytearray(self.nbytes)
        self._chunks = chunks  # iterator of (offset in the tensor, leaf bytes)
        self._done = self.nbytes == 0

    def __iter__(self):
        view = memoryview(self._buf)
        for offset, data in self._chunks:
            n = len(data)
            view[offset:offset + n] = data
            self.received += n
            yield view[offset:offset + n].toreadonly()
        if self.received != self.nbytes:
            raise TvcfsError(f"tensor {self.name}: {self.received} of {self.nbytes} bytes "
                             "arrived")
        self._done = True

    def read(self) -> memoryview:
        """Every byte of the tensor (waits for the rest): a read-only view."""
        if not self._done:
            for _ in self:
                pass
        return memoryview(self._buf).toreadonly()

    def numpy(self):
        """The tensor as a numpy array of ``shape`` (native dtypes as they are;
        BF16 and F8_* as float32, exactly: :func:`tvcfs.dtypes.decode`)."""
        from .dtypes import decode

        return decode(self.read(), self.dtype, self.shape)

    def torch(self):
        """The tensor as a ``torch.Tensor`` of its own dtype (BF16 stays
        ``torch.bfloat16``). Raises ``ImportError`` without torch."""
        import torch

        self.read()
        dtype = getattr(torch, _TORCH_DTYPES[self.dtype])
        if not self.nbytes:
            return torch.empty(self.shape, dtype=dtype)
        return torch.frombuffer(self._buf, dtype=dtype).reshape(self.shape)

    def close(self) -> None:
        """Stop the transfer (what arrived stays readable)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def stream_tensor(source, rev: str = "HEAD", path: str = "", tensor_name: str = "", *,
                  as_array: bool = False, identity=None, engine: str | None = None,
                  timeout: float = 60.0):
    """Stream tensor ``tensor_name`` of the safetensors file ``path`` at revision
    ``rev`` (a branch, tag, full ref, commit CID, or ``HEAD``).

    ``source``: a ``tvcfs://`` URL (a peer; ``identity``, a
    :class:`~tvcfs.transport.identity.NodeIdentity`, authenticates to a private
    one; ``engine`` picks the QUIC engine), a :class:`tvcfs.Repo`, or a
    repository's path. Returns a :class:`TensorStream` — or, with ``as_array``, the
    whole tensor as a numpy array (:meth:`TensorStream.numpy`). ``timeout``:
    seconds without progress after which a remote transfer fails.

    Raises :class:`~tvcfs.errors.TvcfsError` subclasses: the revision, path or
    tensor does not exist (the message lists the tensors), the file is not
    safetensors, a block is missing or corrupt, the peer cannot be reached.
    """
    if isinstance(source, str) and "://" in source:
        header_and_info = _remote(source, rev, path, tensor_name, identity, engine, timeout)
    else:
        header_and_info = _local(source, rev, path, tensor_name)
    stream = TensorStream(*header_and_info)
    return stream.numpy() if as_array else stream


def _pick(header, tensor_name: str, path: str):
    info = header.by_name().get(tensor_name)
    if info is None:
        names = [t.name for t in header.tensors]
        shown = ", ".join(names[:10]) + (f", … ({len(names)} in all)" if len(names) > 10 else "")
        raise TvcfsError(f"{path} has no tensor {tensor_name!r}; it has: {shown or 'none'}")
    return info


def _pieces(idx, start: int, end: int):
    """``(leaf index, first byte in the leaf, end in the leaf, offset in [start, end))``."""
    for i in idx.leaf_range(start, end - start):
        s = idx.starts[i]
        lo, hi = max(start - s, 0), min(end - s, idx.sizes[i])
        yield i, lo, hi, s + lo - start


def _header_of(idx, read_leaf):
    """Parse the safetensors header of file ``idx`` with ``read_leaf(i) -> bytes``."""
    def read(offset, length):
        return b"".join(bytes(read_leaf(i)[lo:hi]) for i, lo, hi, _ in
                        _pieces(idx, offset, min(offset + length, idx.size)))

    if idx.size < 8:
        raise NotSafetensors("shorter than 8 bytes")
    n = int.from_bytes(read(0, 8), "little")
    if n < 2 or n > MAX_HEADER or 8 + n > idx.size:
        raise NotSafetensors(f"bad header length {n}")
    return parse_header(read(0, 8 + n), idx.size)


# ---------------------------------------------------------------- local
def _local(source, rev, path, tensor_name):
    from .dag import FileIndex, resolve_path
    from .repo import Repo

    repo = source if isinstance(source, Repo) else Repo.open(str(source))
    get = repo.blocks.get

    def must_get(c):
        data = get(c)
        if data is None:
            from .errors import BlockNotFound

            raise BlockNotFound(c)
        return data

    tree = repo.read_commit(repo.resolve(rev) if rev else repo.head()).tree
    fcid = resolve_path(must_get, tree, path).cid
    idx = FileIndex.build(must_get, fcid)
    try:
        header = _header_of(idx, lambda i: idx.leaf_data(must_get, i))
    except NotSafetensors as e:
        raise TvcfsError(f"{path} at {rev} is not a safetensors file: {e}") from None
    info = _pick(header, tensor_name, path)

    def chunks():
        try:
            for i, lo, hi, off in _pieces(idx, info.start, info.end):
                yield off, memoryview(idx.leaf_data(must_get, i))[lo:hi]
        finally:
            if repo is not source:
                repo.close()

    return info, fcid, chunks()


# ---------------------------------------------------------------- remote
class _RemoteChunks:
    """The remote transfer in a trio thread; chunks come through a bounded queue."""

    def __init__(self, fn):
        self._q: queue.Queue = queue.Queue(maxsize=16)
        self._token = None
        self._scope = None
        self._closed = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True,
                                        name="tvcfs-stream-tensor")
        self._thread.start()

    def _run(self, fn) -> None:
        import trio

        async def main():
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                self._started.set()
                await fn(self._put)

        try:
            from .transport.runner import run_sync

            run_sync(main)
            self._put_now(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the reading thread
            self._put_now(e)
        finally:
            self._started.set()

    def _put_now(self, item) -> None:
        while not self._closed:
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    async def _put(self, item) -> None:
        import trio

        await trio.to_thread.run_sync(self._put_now, item, abandon_on_cancel=True)

    def get(self):
        item = self._q.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._started.wait()
        if self._token is not None and self._scope is not None:
            import trio

            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except (trio.RunFinishedError, RuntimeError):
                pass
        self._thread.join(10)


def _remote(url, rev, path, tensor_name, identity, engine, timeout):
    meta: dict = {}
    ready = threading.Event()

    async def transfer(put):
        try:
            await _remote_transfer(url, rev, path, tensor_name, identity, engine, timeout,
                                   meta, ready, put)
        finally:
            ready.set()

    chunks = _RemoteChunks(transfer)
    ready.wait()
    if "info" not in meta:  # the transfer failed before the header was read
        try:
            chunks.get()
        finally:
            chunks.close()
        raise TvcfsError(f"{url}: the transfer ended before the header was read")
    return meta["info"], meta["fcid"], _iter_remote(chunks)


async def _remote_transfer(url, rev, path, tensor_name, identity, engine, timeout, meta,
                           ready, put):
    import trio

    from .dag import FileIndex, resolve_path
    from .errors import BlockNotFound
    from .transport import protocol
    from .transport.base import links_of
    from .transport.client import open_session

    blocks: dict = {}  # verified blocks received and still needed

    def get(c):
        data = blocks.get(c)
        if data is None:
            raise BlockNotFound(c)
        return data

    async def receive(sess, rid, keep):
        """The next answer to request ``rid``: a verified block (kept in ``blocks``
        when ``keep(cid)``), or None once it is done. Raises for a missing block,
        a refused or failed request, ``timeout`` seconds without an answer."""
        while True:
            with trio.fail_after(timeout):
                msg = await sess._recv()
            t = type(msg)
            if t is protocol.Block:
                data = protocol.block_bytes(msg.data)
                verify_block(msg.cid, data)  # CorruptBlock: the stream stops
                if keep(msg.cid):
                    blocks[msg.cid] = data
                return msg.cid
            if t is protocol.DontHave:
                raise TvcfsError(f"{url} lacks block {cid_str(msg.cid)} of {path}")
            if t is protocol.Error:
                raise TvcfsError(f"{url} refused the request: {msg.message}")
            if t is protocol.DagDone and msg.request_id == rid:
                if msg.status != protocol.DONE_OK:
                    raise TvcfsError(f"{url}: {msg.message or 'incomplete answer'} ({path})")
                return None

    async def fetch_all(sess, rid):
        await sess.flush()
        while await receive(sess, rid, lambda c: True) is not None:
            pass

    async with open_session(url, identity=identity, engine=engine, auth="auto",
                            refs_prefix="refs/") as sess:
        proto = sess.proto
        commit = await _remote_revision(sess, rev, url)
        # the nodes down the path, the file's interior nodes and its first leaf
        await fetch_all(sess, proto.request_dag([commit], protocol.Selector(protocol.SEL_RANGE, path, 0, 8)))
        tree = links_of(commit, get(commit), history=False)[0] \
            if cid_codec(commit) == DAG_CBOR else commit
        fcid = resolve_path(get, tree, path).cid
        idx = FileIndex.build(get, fcid)
        leaves = set(idx.leaves)
        interior = [c for c in blocks if c not in leaves]
        if idx.size >= 8:
            n = min(int.from_bytes(idx.read(get, 0, 8), "little"), MAX_HEADER, idx.size - 8)
            if any(idx.leaves[i] not in blocks and i not in idx.inline
                   for i in idx.leaf_range(0, 8 + n)):
                await fetch_all(sess, proto.request_range(fcid, 0, 8 + n, have=interior))
        try:
            header = _header_of(idx, lambda i: idx.leaf_data(get, i))
        except NotSafetensors as e:
            raise TvcfsError(f"{path} at {rev} is not a safetensors file: {e}") from None
        info = _pick(header, tensor_name, path)
        meta["info"], meta["fcid"] = info, fcid
        ready.set()
        # the tensor's leaves in file order; interior nodes and leaves held are not sent
        pieces = list(_pieces(idx, info.start, info.end))
        uses: dict = {}
        for i, *_ in pieces:
            uses[idx.leaves[i]] = uses.get(idx.leaves[i], 0) + 1
        rid = None
        if any(idx.leaves[i] not in blocks and i not in idx.inline for i, *_ in pieces):
            have = interior + [c for c in idx.leaves if c in blocks]
            rid = proto.request_range(fcid, info.start, info.end, have=have)
            await sess.flush()
        for i, lo, hi, off in pieces:
            c = idx.leaves[i]
            while c not in blocks and i not in idx.inline:
                if rid is None or await receive(sess, rid, uses.__contains__) is None:
                    raise TvcfsError(f"{url} did not send block {cid_str(c)} of {path}")
            data = idx.leaf_data(get, i)  # checks the leaf's size against its parent
            uses[c] -= 1
            if not uses[c]:
                blocks.pop(c, None)  # its bytes now live in the stream's buffer only
            await put((off, memoryview(data)[lo:hi]))
        if rid is not None:  # the answer's DagDone
            while await receive(sess, rid, lambda c: False) is not None:
                pass


def _iter_remote(chunks: _RemoteChunks):
    try:
        while (item := chunks.get()) is not None:
            yield item
    finally:
        chunks.close()


async def _remote_revision(sess, rev: str, url: str) -> bytes:
    """The commit CID ``rev`` names on the remote (a ref name or a CID)."""
    refs, head = await sess.list_refs("refs/")
    if rev in ("HEAD", "@", "", None):
        if head in refs:
            return refs[head]
        raise TvcfsError(f"{url}: the remote HEAD names no commit")
    for name in (rev, "refs/heads/" + rev, "refs/tags/" + rev):
        if name in refs:
            return refs[name]
    try:
        return cid_from_str(rev)
    except (InvalidCID, ValueError):
        pass
    raise TvcfsError(f"{url} has no revision {rev!r} (branches: "
                     + ", ".join(sorted(k[len('refs/heads/'):] for k in refs
                                        if k.startswith('refs/heads/'))) + ")")

