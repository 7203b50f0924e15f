"""What the pcam-* binaries share: a --help that lists their own flags, and the start-up.

absl prints, for ``--help``, the flags of the script's ``__main__`` module; a console-script
wrapper defines none, so every binary would show only its usage line. ``run_binary`` answers
``--help`` (and ``-h``, ``--helpshort``) itself: the binary's docstring (usage and an example),
then the flags defined in its own module and in the shared modules it names (the distributed
flags of pcam-train and pcam-eval), with one-line descriptions. ``--helpfull`` still lists every
library flag. Everything else goes to ``absl.app.run``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")


def help_text(doc: str, flag_modules: Sequence[str]) -> str:
    """The docstring, then the help of the flags defined in each of `flag_modules`."""
    parts = [doc.strip(), "", "flags:"]
    for module in flag_modules:
        lines = flags.FLAGS.module_help(module).strip().splitlines()
        parts += [line for line in lines if line.startswith(" ")]  # not the "module:" header
    parts.append("\n--helpfull lists the flags of the libraries too.")
    return "\n".join(parts) + "\n"


def run_binary(
    main: Callable[[list[str]], Any],
    doc: str,
    flag_modules: Sequence[str],
    argv: list[str] | None = None,
) -> None:
    """Prints `help_text` and exits 0 for a help flag; else ``app.run(main, argv)``."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv[1:]):
        sys.stdout.write(help_text(doc, flag_modules))
        sys.exit(0)
    app.run(main, argv=argv)


__all__ = ["HELP_FLAGS", "help_text", "run_binary"]
