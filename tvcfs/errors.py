"""Errors raised by tvcfs. Every one carries a one-line message fit for the CLI."""


class TvcfsError(Exception):
    """Base class of all tvcfs errors; the CLI prints ``str(e)`` and exits non-zero."""

    exit_code = 1


class NotARepository(TvcfsError):
    """The path is not a tvcfs repository (no ``.tvcfs`` store found)."""


class InvalidCID(TvcfsError, ValueError):
    """A string or byte sequence is not a CIDv1 sha2-256 of a codec tvcfs reads."""


class CorruptBlock(TvcfsError):
    """A block's bytes do not hash to its CID, or it does not decode as its codec."""


class BlockNotFound(TvcfsError, KeyError):
    """A block is in no configured store. ``.cid`` holds the binary CID."""

    def __init__(self, cid: bytes, msg: str | None = None):
        from .encoding.cid import cid_str

        self.cid = cid
        super().__init__(msg or f"block {cid_str(cid)} not found")

    def __str__(self):
        return self.args[0]


class RevisionNotFound(TvcfsError, LookupError):
    """A revision (CID, CID prefix, branch, tag, ``NAME~N``) does not resolve."""


class AmbiguousRevision(RevisionNotFound):
    """A CID prefix matches more than one commit."""


class PathNotFound(TvcfsError, FileNotFoundError):
    """A path does not exist in a tree."""


class RefConflict(TvcfsError):
    """A compare-and-swap ref update found another value than expected.

    ``.ref``: the ref name; ``.expected`` / ``.actual``: binary CIDs or ``None``;
    ``.commit``: the binary CID of the commit that could not be recorded (kept in
    the reflog, so it stays reachable).
    """

    def __init__(self, ref, expected, actual, commit=None):
        from .encoding.cid import cid_str

        self.ref, self.expected, self.actual, self.commit = ref, expected, actual, commit
        exp = cid_str(expected) if expected else "(none)"
        act = cid_str(actual) if actual else "(none)"
        msg = f"ref {ref} moved: expected {exp}, found {act}"
        if commit:
            msg += f"; commit {cid_str(commit)} kept in the reflog"
        super().__init__(msg)


class RefExists(TvcfsError):
    """A branch or tag being created exists already."""


class MalformedObject(TvcfsError, ValueError):
    """A dag-pb, UnixFS, dag-cbor or CAR object does not decode."""


class CommitConflict(TvcfsError):
    """A directory worked on from a base commit was committed onto a branch that
    moved since, and both changed the same paths: the commit was recorded on its own
    ``conflicts/…`` branch instead, the branch was left alone (docs/writes.md,
    "Concurrency"). ``.result``: the :class:`tvcfs.repo.CommitResult` (its ``branch``
    is the conflicts branch, ``collisions`` the colliding paths)."""

    def __init__(self, msg: str, result):
        self.result = result
        super().__init__(msg)
