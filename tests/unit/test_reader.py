"""Readahead decisions of the mount's block reader (``tvcfs.fs.reader``), driven with
the request patterns the kernel sends for real programs, on a real LMDB store.

Loading a tensor through an mmap (``safe_open().get_tensor``) reaches the mount as:
a read-around centred on the fault at the tensor's first byte (so it starts in the
tensor before), a read-around of the tensor's last page (``memmove`` loads the tail
of its source first), then sequential 1 MiB requests from the head. These tests
replay that pattern (the offsets and sizes a traced ``safe_open`` produced on this
kernel with ``read_ahead_kb`` 1024) and check what the reader schedules.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from tvcfs.fs.reader import BlockReader

MIB = 1 << 20
PAGE = 4096
RA = MIB  # the mount's read_ahead_kb


@pytest.fixture
def model(tmp_repo, tmp_path):
    """Seven f32 tensors of 3 MiB committed; yields ``(reader, index, tensor ranges)``
    with the ranges ``(start, end)`` in file bytes, in file order."""
    d = tmp_path / "m"
    d.mkdir()
    rng = np.random.default_rng(0)
    save_file({f"layer.{i}.weight": rng.standard_normal(3 * MIB // 4, dtype=np.float32) for i in range(7)},
              str(d / "model.safetensors"))
    tmp_repo.commit_dir(str(d), "main", "m")
    reader = BlockReader(tmp_repo.store)
    try:
        idx = reader.index(tmp_repo.entry("main", "model.safetensors").cid)
        tm = reader.tensor_map(idx)
        assert tm is not None and len(tm.starts) == 7
        yield reader, idx, list(zip(tm.starts, tm.ends))
    finally:
        reader.close()


def _spy(reader) -> list:
    """Record every ``(lo, hi, priority)`` the reader hands to readahead (the real
    method still runs)."""
    calls = []
    real = reader._schedule

    def spy(idx, lo, hi, priority):
        calls.append((lo, hi, priority))
        return real(idx, lo, hi, priority)

    reader._schedule = spy
    return calls


class KernelMmap:
    """The kernel's page cache and readahead for an mmap of a file on the mount, as far
    as they decide which requests reach the file system (mm/filemap.c, mm/readahead.c):
    a fault on a page not cached reads ``RA`` around it (centred, clamped at 0) and
    marks the page ``RA / 4`` before that window's end; touching a marked page reads
    the next ``RA`` asynchronously. Only pages not yet cached are requested; each
    request is handed to ``reader.readahead`` as the mount's ``read`` does."""

    def __init__(self, reader, idx, fh: int = 1):
        self.reader, self.idx, self.fh = reader, idx, fh
        self.npages = (idx.size + PAGE - 1) // PAGE
        self.cached = bytearray(self.npages)
        self.markers: dict[int, int] = {}  # marked page -> start of the next window
        self.requests: list[tuple[int, int]] = []

    def _read(self, first: int, stop: int) -> None:
        first, stop = max(first, 0), min(stop, self.npages)
        p = first
        while p < stop:  # one request per run of pages not cached
            if self.cached[p]:
                p += 1
                continue
            q = p
            while q < stop and not self.cached[q]:
                self.cached[q] = 1
                q += 1
            lo, hi = p * PAGE, min(q * PAGE, self.idx.size)
            self.requests.append((lo, hi))
            self.reader.readahead(self.fh, self.idx, lo, hi - lo)
            p = q
        if stop - RA // PAGE // 4 > first:
            self.markers[stop - RA // PAGE // 4] = stop

    def touch(self, byte: int) -> None:
        p = byte // PAGE
        if not self.cached[p]:
            start = max(p - RA // PAGE // 2, 0)
            self._read(start, start + RA // PAGE)
        elif p in self.markers:
            nxt = self.markers.pop(p)
            self._read(nxt, nxt + RA // PAGE)

    def copy(self, lo: int, hi: int) -> None:
        """``memmove`` out of the mapping: the last bytes first, then forward."""
        self.touch(lo)
        self.touch(hi - 1)
        for b in range(lo // PAGE * PAGE, hi, PAGE):
            self.touch(b)


def _covered(calls, lo: int, hi: int) -> bool:
    """Whether the union of the scheduled ranges covers ``[lo, hi)``."""
    for a, b in sorted((a, b) for a, b, _ in calls if b > a):
        if a <= lo < b:
            lo = b
    return lo >= hi


def test_tail_probe_keeps_the_run_so_loading_every_tensor_is_a_scan(model):
    """Copying tensor after tensor out of an mmap is a scan: once the run has moved on
    to a later tensor twice, readahead runs past the tensor being read, so from the
    fourth tensor on, each next tensor (head and tail) is scheduled before the kernel
    asks for it. (Before the tail fault kept the run, no tensor ever was.)"""
    reader, idx, ts = model
    calls = _spy(reader)
    km = KernelMmap(reader, idx)
    km.copy(0, ts[0][0])  # the header
    ahead = []
    for i, t in enumerate(ts[:-1]):
        km.copy(*t)
        ahead.append(_covered(calls, *ts[i + 1]))  # before the next tensor's first fault
    assert ahead[3:] == [True] * (len(ts) - 4), (ahead, km.requests, calls)


def test_loading_one_tensor_schedules_only_that_tensor(model):
    """Loading one tensor (the header, then the tensor through an mmap) schedules that
    tensor's rest at tensor priority with its first request, its last leaf first, and
    nothing of any other tensor (the read-around of the header covers the first
    tensor's head: not a read of it)."""
    reader, idx, ts = model
    calls = _spy(reader)
    km = KernelMmap(reader, idx)
    km.copy(0, ts[0][0])
    t = ts[4]
    km.copy(*t)
    scheduled = [(lo, hi, prio) for lo, hi, prio in calls if hi > lo]
    assert scheduled, calls
    for lo, hi, _ in scheduled:
        assert t[0] - RA <= lo and hi <= t[1] + RA, (lo, hi, t)
    # with its first request that can only be for it (the head's read-around and the
    # tail's straddle the neighbours' last and first pages: the same requests as a
    # fault there, see test_loading_the_second_tensor_reads_nothing_of_the_first):
    # the tensor's last leaf first, then the rest of the tensor
    last = idx.starts[idx.leaf_range(t[1] - 1, 1)[0]]
    assert scheduled[0] == (last, t[1], 2), (scheduled, t)
    assert scheduled[1][1:] == (t[1], 2) and scheduled[1][0] <= t[0] + 2 * RA, (scheduled, t)
    assert km.requests[1][0] < t[0] < km.requests[1][1]  # the first request was the head's


def test_loading_the_second_tensor_reads_nothing_of_the_first(model):
    """The header, then the second tensor: its head's read-around starts in the first
    tensor, and the header's read already reached into the first tensor, so the
    request looks like ``memmove``'s tail probe of the first tensor — the same request,
    when the first tensor ends inside that page. It must not schedule the first
    tensor (before: all of it was read for nothing, 2.05x the bytes for the 94 MiB
    ``embed_tokens`` of the synthetic model in ``scripts/bench/mount_read.py``)."""
    reader, idx, ts = model
    calls = _spy(reader)
    km = KernelMmap(reader, idx)
    km.copy(0, ts[0][0])  # the header: its read-around reaches into the first tensor
    t = ts[1]
    assert t[0] % PAGE, "the first tensor must end inside a page for this case"
    km.copy(*t)
    scheduled = [(lo, hi) for lo, hi, _ in calls if hi > lo]
    assert any(hi == t[1] for _, hi in scheduled), (scheduled, t)  # its rest, once it is clear
    for lo, hi in scheduled:
        assert t[0] - RA <= lo and hi <= t[1] + RA, (lo, hi, t)
