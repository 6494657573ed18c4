"""One peer score record and one back-off rule (tvcfs/transport/peerscore.py; docs/lazy.md
"Peers"): the rules themselves, the repository's persisted ``peer_scores`` written
with them, and the peer tier skipping a failed peer by them."""

from __future__ import annotations

import socket

import pytest

from tvcfs.transport.peerscore import BAD_BLOCK_FACTOR, PENALTY_HALF_LIFE, Backoff, PeerScore


def test_backoff_doubles_to_its_maximum_and_resets_on_success():
    b = Backoff(0.2, 5.0)
    waits = [b.failed("down", now=100.0) for _ in range(7)]
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert b.remaining(now=100.0) == pytest.approx(5.0)
    assert b.remaining(now=106.0) == 0.0
    assert b.reason == "down"
    b.succeeded()
    assert (b.reason, b.remaining(now=100.0), b.failed("again", now=0.0)) == ("", 0.0, pytest.approx(0.2))
    fixed = Backoff(5.0, 5.0)  # the peer tier's: a failed peer is skipped 5 s every time
    assert [fixed.failed("x", now=0.0) for _ in range(3)] == [5.0, 5.0, 5.0]


def test_penalty_rule_and_the_persisted_record():
    s = PeerScore()
    before = s.est(0, 1 << 20)
    s.bad(2)
    assert s.penalty == BAD_BLOCK_FACTOR ** 2 and s.bad_blocks == 2 and s.last_bad > 0
    assert s.est(0, 1 << 20) == pytest.approx(before * 16)
    s.decay(PENALTY_HALF_LIFE)
    assert s.penalty == pytest.approx(8.0)
    s.decay(100 * PENALTY_HALF_LIFE)
    assert s.penalty == 1.0
    rec = s.record()
    assert rec == {"bad_blocks": 2, "last_bad": int(s.last_bad)}
    again = PeerScore.from_record(rec)
    assert (again.bad_blocks, again.penalty) == (2, 1.0)
    assert PeerScore.from_record(None).bad_blocks == 0


def test_clone_fetch_scores_are_peer_score_records(tmp_repo):
    """What a fetch counts against a peer (``transport.peer.penalise``) is a
    ``PeerScore`` record, and ``tvcfs remote list -v`` reads it back."""
    from tvcfs.transport.identity import NodeIdentity, format_peer_id
    from tvcfs.transport.peer import bad_count, penalise, peer_scores

    peer = NodeIdentity.generate().peer_id
    penalise(tmp_repo, peer, 3)
    penalise(tmp_repo, peer, 2)
    rec = peer_scores(tmp_repo)[format_peer_id(peer)]
    assert set(rec) == {"bad_blocks", "last_bad"} and rec["bad_blocks"] == 5
    assert PeerScore.from_record(rec).bad_blocks == 5
    url = f"tvcfs://{format_peer_id(peer)}@127.0.0.1:1/"
    assert bad_count(tmp_repo, url) == 5


def test_peer_tier_skips_a_failed_peer_by_the_back_off_rule():
    """A peer that cannot be reached is skipped for the tier's back-off (the same
    ``Backoff``), and the error says so and when it is retried."""
    from tvcfs.errors import BlockUnavailable
    from tvcfs.store.peers import PeerStore

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tvcfs://127.0.0.1:{port}/"
    store = PeerStore([url], timeout=5.0, backoff=30.0)
    try:
        cid = bytes.fromhex("01551220") + bytes(32)
        with pytest.raises(BlockUnavailable):
            store.get(cid)
        assert store.stat()["peers"][url].startswith("down: ")
        with pytest.raises(BlockUnavailable, match=r"retrying in (29|30) s"):
            store.get(cid)  # skipped without an attempt: still inside the back-off
    finally:
        store.close()
