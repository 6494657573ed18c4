"""``tvcfs completion bash|zsh``: a shell completion script generated from the
argument parser (with shtab), so it always lists the current commands and options.

Install: ``tvcfs completion bash > ~/.local/share/bash-completion/completions/tvcfs``
or, for zsh, ``tvcfs completion zsh > "${fpath[1]}/_tvcfs"``.
"""

from __future__ import annotations


def cmd_completion(args) -> int:
    """``tvcfs completion SHELL``: print the shell completion script (shtab) for
    ``args.shell``; exit status 0."""
    import shtab

    from . import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def register(sub) -> None:
    """Add ``completion`` to the ``tvcfs`` parser's subparsers."""
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                       description="Print a completion script for SHELL. bash: save it as "
                                   "~/.local/share/bash-completion/completions/tvcfs (or `source` it); "
                                   "zsh: save it as _tvcfs in a directory of $fpath.")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=cmd_completion)
