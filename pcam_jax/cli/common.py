"""What the pcam-* binaries share: the flags several of them take, declared once here; the
``--config.FIELD=VALUE`` overrides; ``--help``; and the start-up (``run_binary``).

Each binary is one module of ``pcam_jax.cli`` with a thin ``main`` that reads its flags and
calls one library function, and a ``run()`` console-script entry point that calls
``run_binary(main, __doc__, shared=(...))`` naming the shared flags it takes. A shared flag given
to a binary that does not take it is a usage error naming it. ``--help`` (and ``-h``,
``--helpshort``) prints the binary's docstring (usage and an example), then its own flags and
the shared ones it takes, with one-line descriptions; ``--helpfull`` still lists every library
flag. Binaries that take ``--config.a.b=value`` (``overrides=True``) get them from
``config_overrides()``, applied with ``pcam_jax.config.apply_overrides``: one mechanism for all.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from absl import app, flags

from pcam_jax.config import OVERRIDE_PREFIX
from pcam_jax.errors import PcamError
from pcam_jax.runtime.stopping import stop_on_signals

T = TypeVar("T")
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")

# --- the shared flags ------------------------------------------------------------------------

WORKDIR = flags.DEFINE_string("workdir", None, "A pcam-train run directory (WORKDIR).")
MODEL = flags.DEFINE_string(
    "model",
    None,
    "A model bundle, a pcam-train workdir, or bundled:NAME, a model shipped with pcam_jax "
    "(bundled:effnet-lite0, the default; bundled:p4resnet, exact under quarter turns; "
    "bundled:p4resnet-valid, exact too and its dense slide map equals its windows: "
    "pcam-slide's default).",
)
CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "For a workdir: best, last or a saved step.")
WEIGHTS = flags.DEFINE_enum(
    "weights",
    "ema",
    ["ema", "raw"],
    "ema: the moving average of the weights when the run kept one (config.ema_decay > 0), "
    "else the raw weights; raw: always the raw weights.",
)
OUT = flags.DEFINE_string(
    "out", None, "What to write: a CSV file (pcam-predict) or a new folder (the others)."
)
TTA = flags.DEFINE_bool("tta", False, "Average predictions over the 8 D4 transforms of a patch.")
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    None,
    "Patches per device batch (default: 256; pcam-explain: 32).",
    lower_bound=1,
)
PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
SEED = flags.DEFINE_integer("seed", 0, "Seed; the same seed gives the same result.")
ROOT = flags.DEFINE_string("root", None, "A data directory (PCam HDF5 files unless told).")
CHECKSUMS = flags.DEFINE_string(
    "checksums", None, "An md5sum-style file ('<md5>  <name>' per line)."
)
PREDICTIONS = flags.DEFINE_string(
    "predictions",
    None,
    "Predictions to read: a pcam-predict or pcam-eval CSV (pcam-explain makes a gallery of it) "
    "or a pcam-slide cohort folder, one sub-folder per slide (pcam-camelyon-eval).",
)
BOOTSTRAP = flags.DEFINE_integer(
    "bootstrap", 1000, "Bootstrap resamples of the AUC's 95% interval (0: none).", lower_bound=0
)

SHARED_FLAGS: tuple[str, ...] = (
    "workdir",
    "model",
    "checkpoint",
    "weights",
    "out",
    "tta",
    "batch_size",
    "progress",
    "seed",
    "root",
    "checksums",
    "predictions",
    "bootstrap",
)
#: The shared flags of a binary that runs a model over inputs (pcam-predict, pcam-slide).
PREDICTION_FLAGS = ("out", "model", "checkpoint", "tta", "batch_size", "progress")
_overrides: list[str] = []


def define_on(
    fv: flags.FlagValues, name: str, help_text: str | None = None, *, required: bool = False
) -> None:
    """Declares shared flag `name` on a subcommand's own flag set `fv` (pcam-data), the same
    type and default, with the subcommand's `help_text`."""
    flag = copy.deepcopy(flags.FLAGS[name])
    flag.unparse()  # the default, whatever a parse of the global flags set
    if help_text is not None:
        flag.help = help_text
    flags.DEFINE_flag(flag, flag_values=fv)
    if required:
        flags.mark_flag_as_required(name, flag_values=fv)


def batch_size(default: int = 256) -> int:
    """--batch_size, or this binary's `default`."""
    return default if BATCH_SIZE.value is None else BATCH_SIZE.value


def config_overrides() -> list[str]:
    """The ``--config.FIELD=VALUE`` arguments of this invocation (binaries with overrides)."""
    return list(_overrides)


# --- help and start-up -----------------------------------------------------------------------


def _flag_help(name: str) -> str:
    flag = flags.FLAGS[name]
    shown = f"--[no]{name}" if flag.boolean else f"--{name}"
    default = "" if flag.default is None else f"\n    (default: {flag.default_as_str})"
    return f"  {shown}: {flag.help}{default}"


def help_text(doc: str, flag_modules: Sequence[str], shared: Sequence[str] = ()) -> str:
    """The docstring, then the help of the flags defined in each of `flag_modules` and of the
    `shared` flags."""
    parts = [doc.strip(), "", "flags:"]
    for module in flag_modules:
        lines = flags.FLAGS.module_help(module).strip().splitlines()
        parts += [line for line in lines if line.startswith(" ")]  # not the "module:" header
    parts += [_flag_help(name) for name in shared]
    parts.append("\n--helpfull lists the flags of the libraries too.")
    return "\n".join(parts) + "\n"


def _flag_name(arg: str) -> str:
    name = arg.lstrip("-").split("=", 1)[0]
    return name[2:] if name.startswith("no") and name[2:] in SHARED_FLAGS else name


def run_binary(
    main: Callable[[list[str]], Any],
    doc: str,
    flag_modules: Sequence[str],
    *,
    shared: Sequence[str] = (),
    overrides: bool = False,
    argv: list[str] | None = None,
) -> None:
    """Prints `help_text` and exits 0 for a help flag; else ``app.run(main, argv)``.

    `shared`: the SHARED_FLAGS this binary takes (any other is a usage error). `overrides`:
    whether it takes ``--config.*`` arguments (kept out of absl's parser, read with
    ``config_overrides()``).
    """
    argv = list(sys.argv if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv[1:]):
        sys.stdout.write(help_text(doc, flag_modules, shared))
        sys.exit(0)
    prog = doc.strip().split("`")[1] if doc.strip().startswith("`") else argv[0]
    _overrides[:] = [a for a in argv[1:] if a.startswith(OVERRIDE_PREFIX)] if overrides else []
    rest = [a for a in argv[1:] if a not in _overrides]
    for arg in rest:
        if arg == "--":
            break
        if arg.startswith("-") and _flag_name(arg) in set(SHARED_FLAGS) - set(shared):
            sys.exit(f"{prog}: error: {arg.split('=')[0]} is not a flag of {prog}; see --help")
    app.run(
        partial(_run_main, main, prog),
        argv=[argv[0], *rest],
        flags_parser=partial(_parse_flags, prog),
    )


def _parse_flags(prog: str, argv: list[str]) -> list[str]:
    """absl's flag parsing, a bad flag reported in one line naming it (absl prints two)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"{prog}: error: {e}; see --help")


def _run_main(main: Callable[[list[str]], Any], prog: str, argv: list[str]) -> Any:
    return reporting_errors(prog, partial(main, argv))


def reporting_errors(prog: str, body: Callable[[], T]) -> T:
    """``body()``, its errors turned into what the user of binary `prog` reads (every binary's
    one path, pcam-data's subcommands included): a PcamError (every error a user can cause) or
    an OSError (the machine's: a read-only or full disk, permissions) exits with status 1 and
    one line ``PROG: error: ...``, no traceback; anything else is a bug: its traceback, then a
    line asking to report it. Ctrl-C (SIGINT) and SIGTERM unwind the same way (what was not
    finished is removed on the way) and end with one line and status 128 + the signal's number
    (130, 143); pcam-train replaces both while it trains (a checkpoint, then status 75)."""
    try:
        with stop_on_signals():
            return body()
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        name = signal.Signals(signum).name + (" (Ctrl-C)" if signum == signal.SIGINT else "")
        print(
            f"{prog}: stopped by {name}; nothing unfinished was left (rerun the command to "
            "start again; a cohort keeps its finished slides and goes on)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + signum)
    except (SystemExit, app.UsageError):
        raise
    except PcamError as e:
        sys.exit(f"{prog}: error: {e}")
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        sys.exit(f"{prog}: error: {e.strerror or e}{where}; check the path and its permissions")
    except Exception:
        traceback.print_exc()
        sys.exit(
            f"{prog}: internal error (a bug in pcam_jax, not in your input): please report it "
            "with the traceback above"
        )


def check_finite(name: str) -> None:
    """Registers a validator: flag `name` (a float, None allowed) must be finite."""
    flags.register_validator(
        name,
        lambda v: v is None or math.isfinite(v),
        message=f"--{name} must be a finite number",
    )


__all__ = [
    "BATCH_SIZE",
    "CHECKPOINT",
    "HELP_FLAGS",
    "MODEL",
    "OUT",
    "PREDICTION_FLAGS",
    "PROGRESS",
    "SHARED_FLAGS",
    "TTA",
    "WEIGHTS",
    "WORKDIR",
    "batch_size",
    "check_finite",
    "config_overrides",
    "define_on",
    "help_text",
    "run_binary",
]
