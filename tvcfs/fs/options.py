"""The options of a mount, defined once (docs/mount.md, "Running a mount").

:data:`MOUNT_OPTIONS` is the one table: ``tvcfs mount`` builds its argument parser
from it (:func:`add_arguments`), the background start rebuilds the foreground
command line from it (:func:`command_line`), ``-o NAME[=VALUE],…`` (the mount(8)
spelling) is read with it (:func:`parse_o_options`), and the daemon's keywords
(:func:`tvcfs.fs.daemon.run_foreground`) come from it (:func:`daemon_keywords`).
A new option is one row here.

Importing this module is cheap (no pyfuse3, no trio): the CLI does it at start.
"""

from __future__ import annotations

__all__ = ["GENERIC_O_OPTIONS", "GENERIC_O_PREFIXES", "MOUNT_OPTIONS", "NO_VERIFY_HELP", "MountOption", "add_arguments", "command_line",
           "daemon_keywords", "parse_o_options", "parse_seconds", "parse_size"]

def parse_size(text: str) -> int:
    """``"512M"``, ``"10G"``, ``"1048576"`` → bytes (K, M, G, T: powers of 1024; a
    trailing ``B`` or ``iB`` is allowed). Raises ``ValueError`` for anything else or a
    size under one byte or not finite (``inf``, ``1e999``: ``float`` takes them)."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    value = float(t[:-1] if t[-1:] in "KMGT" else t) * mult
    if not value >= 1 or value == float("inf"):  # (not >=: NaN too)
        raise ValueError(f"not a positive size: {text!r}")
    return int(value)


def parse_seconds(text: str) -> float:
    """``"2.5"`` → 2.5 seconds (a duration of a mount option: ``--commit-delay``,
    ``--fetch-timeout``). Raises ``ValueError`` for anything else, a negative
    duration, ``inf`` or NaN (``float`` takes them: a commit delay of ``nan`` or
    ``inf`` never committed until the unmount)."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError(f"not a number of seconds: {text!r}")
    return value


class MountOption:
    """One option of ``tvcfs mount``.

    ``flags``: the command-line spellings; ``dest``: the attribute on the parsed
    arguments; ``kind``: ``"flag"`` (on/off), ``"value"`` (one value of ``type``) or
    ``"list"`` (repeatable); ``keyword``: the :func:`~tvcfs.fs.daemon.run_foreground`
    keyword it becomes (``None``: not passed on; ``"!verify"``: passed negated as
    ``verify``); ``o_name``: its name in ``-o`` lists (``None``: not settable there);
    ``hidden``: left out of ``--help``. (A plain class, not a dataclass: this module
    is imported at every start of the CLI.)"""

    __slots__ = ("flags", "dest", "help", "kind", "type", "default", "metavar", "keyword", "o_name", "hidden")

    def __init__(self, flags: tuple, dest: str, help: str, kind: str = "flag", type=None, default=None,
                 metavar: str | None = None, keyword: str | None = None, o_name: str | None = None,
                 hidden: bool = False):
        self.flags, self.dest, self.help, self.kind, self.type = flags, dest, help, kind, type
        self.default, self.metavar, self.keyword, self.o_name, self.hidden = default, metavar, keyword, o_name, hidden

    def __repr__(self) -> str:
        return f"MountOption({self.flags[0]})"

    @property
    def unset(self):
        """The value of the option when it is not given."""
        return [] if self.kind == "list" else (False if self.kind == "flag" else self.default)


NO_VERIFY_HELP = ("do not check blocks against their CIDs before their bytes leave the "
                  "store (by default each is hashed once per process; a damaged one is an error)")

MOUNT_OPTIONS: tuple[MountOption, ...] = (
    MountOption(("--debug",), "debug", "log every request (implies verbose log)", keyword="debug",
                o_name="debug"),
    MountOption(("--verify-reads",), "verify_reads", "accepted for compatibility: reads are verified by default",
                o_name="verify_reads"),
    MountOption(("--no-verify",), "no_verify", NO_VERIFY_HELP, keyword="!verify", o_name="no_verify"),
    MountOption(("--allow-other",), "allow_other", "let other users access the mount", keyword="allow_other",
                o_name="allow_other"),
    MountOption(("--commit-delay",), "commit_delay",
                "seconds of quiet after the last write handle closes before a commit (default 1)",
                kind="value", type=parse_seconds, default=1.0, keyword="commit_delay", o_name="commit_delay"),
    MountOption(("--read-ahead-kb",), "read_ahead_kb",
                "the kernel's readahead on the mount, KiB (default 1024: 1 MiB requests for "
                "sequential reads; a lazy mount 128). Smaller moves fewer bytes around an "
                "mmap fault (loading single tensors), larger requests need more",
                kind="value", type=int, metavar="KB", keyword="read_ahead_kb", o_name="read_ahead_kb"),
    # set by the background start: log to the system log too (nobody watches its stderr)
    MountOption(("--syslog",), "syslog", "log to the system log too", keyword="syslog", hidden=True),
    MountOption(("--remote",), "remote", "peer to fetch missing leaves from (repeatable; a lazy clone also "
                "uses its remotes)", kind="list", metavar="URL", keyword="remotes"),
    MountOption(("--fetch-timeout",), "fetch_timeout", "a read whose blocks no peer delivers in this time "
                "fails with EIO (default 30)", kind="value", type=parse_seconds, metavar="SECONDS",
                keyword="fetch_timeout", o_name="fetch_timeout"),
    MountOption(("--prefetch",), "prefetch", "fetch files of HEAD matching this glob in the background, "
                "lowest priority (repeatable; @FILE: paths in the order to fetch them)", kind="list",
                metavar="PATTERN", keyword="prefetch"),
    MountOption(("--cache-size",), "cache_size", "s3:// lazy mounts: keep at most this many bytes of file "
                "leaves in the local store (K, M, G suffixes); least recently used leaves are evicted, never "
                "those of open files, only those the bucket holds (default: unbounded)", kind="value",
                type=parse_size, metavar="BYTES", keyword="cache_size", o_name="cache_size"),
)


def add_arguments(parser) -> None:
    """Add every option of :data:`MOUNT_OPTIONS` to the ``argparse`` parser of ``tvcfs mount``."""
    import argparse

    for option in MOUNT_OPTIONS:
        kw = {"help": argparse.SUPPRESS if option.hidden else option.help}
        if option.kind == "flag":
            kw["action"] = "store_true"
        else:
            kw.update(default=option.unset, metavar=option.metavar)
            if option.kind == "list":
                kw["action"] = "append"
            elif option.type in _ARGUMENT_TYPES:
                kw["type"] = _ARGUMENT_TYPES[option.type]
            else:
                kw["type"] = option.type
        parser.add_argument(*option.flags, dest=option.dest, **kw)


def _argument_type(parse, what: str):
    """``parse`` as an ``argparse`` type: its ``ValueError`` becomes the one-line
    usage error ``not WHAT: 'TEXT'``."""
    def convert(text: str):
        import argparse

        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(what.format(text=repr(text))) from None

    return convert


_ARGUMENT_TYPES = {parse_size: _argument_type(parse_size, "not a size: {text} (e.g. 512M, 10G)"),
                   parse_seconds: _argument_type(parse_seconds, "not a number of seconds (0 or more): {text}")}


def _values(source) -> dict:
    """``{dest: value}`` of every option from parsed arguments or a dict (missing:
    the option's unset value)."""
    get = source.get if isinstance(source, dict) else (lambda k, d: getattr(source, k, d))
    return {o.dest: get(o.dest, o.unset) for o in MOUNT_OPTIONS}


def command_line(source) -> list:
    """The ``tvcfs mount`` arguments that give the options set in ``source`` (parsed
    arguments or ``{dest: value}``): what the background start passes on to the
    foreground mount process. Unset options are left out."""
    argv = []
    for option in MOUNT_OPTIONS:
        value = _values(source)[option.dest]
        if option.kind == "flag":
            argv += [option.flags[0]] if value else []
        elif option.kind == "list":
            for item in value or ():
                argv += [option.flags[0], str(item)]
        elif value is not None:
            argv += [option.flags[0], str(value)]
    return argv


def daemon_keywords(source) -> dict:
    """The keywords of :func:`tvcfs.fs.daemon.run_foreground` for the options in
    ``source`` (parsed arguments or ``{dest: value}``); unset value options are left
    out, so the daemon's defaults apply."""
    out = {}
    for option in MOUNT_OPTIONS:
        value = _values(source)[option.dest]
        if option.keyword is None:
            continue
        if option.keyword.startswith("!"):
            out[option.keyword[1:]] = not value
        elif option.kind == "list":
            if value:
                out[option.keyword] = list(value)
        elif option.kind == "flag" or value is not None:
            out[option.keyword] = value
    return out


# mount(8), fstab and systemd options that are not tvcfs's: ignored in ``-o`` lists
# (mount(8) passes them to every helper; mount.fuse3 ignores them the same way)
GENERIC_O_OPTIONS = frozenset((
    "rw", "ro", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group",
    "_netdev", "nofail", "sync", "async", "atime", "noatime", "relatime", "norelatime",
    "strictatime", "nostrictatime", "lazytime", "nolazytime", "diratime", "nodiratime",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "default_permissions"))
GENERIC_O_PREFIXES = ("x-", "X-", "user=", "comment=", "fsname=", "subtype=", "helper=", "uhelper=")

_EXPECTED = {int: "an integer", float: "a number of seconds", parse_seconds: "a number of seconds (0 or more)",
             parse_size: "a size such as 512M"}


def parse_o_options(texts, sloppy: bool = False) -> dict:
    """``{dest: value}`` from ``-o`` lists (``["commit_delay=2,allow_other", …]``), by
    the ``o_name`` of each option. The generic options of mount(8), fstab and systemd
    (:data:`GENERIC_O_OPTIONS`, :data:`GENERIC_O_PREFIXES`) are ignored. Raises
    ``ValueError`` naming an unknown option (skipped instead when ``sloppy``: mount(8)'s
    ``-s``) or a bad value."""
    by_name = {o.o_name: o for o in MOUNT_OPTIONS if o.o_name}
    out = {}
    for text in texts:
        for item in filter(None, text.split(",")):
            name, has_value, value = item.partition("=")
            option = by_name.get(name)
            if option is None:
                if item in GENERIC_O_OPTIONS or item.startswith(GENERIC_O_PREFIXES) or sloppy:
                    continue
                raise ValueError(f"unknown mount option {name!r} in -o (known: {', '.join(sorted(by_name))})")
            if option.kind == "flag":
                if has_value:
                    raise ValueError(f"mount option {name} takes no value")
                out[option.dest] = True
                continue
            try:
                out[option.dest] = option.type(value)
            except ValueError:
                expected = _EXPECTED.get(option.type, "a value")
                raise ValueError(f"bad value for mount option {name}: {value!r} ({expected} expected)") from None
    return out
