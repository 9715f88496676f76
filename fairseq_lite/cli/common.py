"""What every fairseq_lite command does around its work: logging set-up and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, List, Optional

from fairseq_lite.errors import ConfigError, FairseqLiteError

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """fairseq's log line format, on stdout (what users grep their logs for)."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S", level=level, stream=sys.stdout)


def wants_traceback(argv: List[str]) -> bool:
    return "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


def run_cli(main: Callable[[List[str]], Optional[int]], argv: Optional[List[str]] = None) -> None:
    """Run ``main(argv)``; a FairseqLiteError becomes ``error: <message>`` on stderr and its exit code.

    Configuration errors exit 2, runtime errors 1. As a safety net, OSError, UnicodeDecodeError, a YAML syntax
    error and other ValueErrors that reach here become one line too (see ``describe_uncaught``).
    ``--debug`` or ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = wants_traceback(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        described = exc if isinstance(exc, FairseqLiteError) else describe_uncaught(exc)
        if debug or described is None:
            raise
        message = " ".join(str(described).split())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(described.exit_code)
    sys.exit(code or 0)


def describe_uncaught(exc: Exception) -> Optional[FairseqLiteError]:
    """The one-line error for an exception that no fairseq_lite code turned into a message, or None (a bug:
    keep the traceback). Names the file of an OSError and the file and line of a YAML error."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return ConfigError(f"{mark.name}:{mark.line + 1}: YAML syntax error: {exc.problem} (column {mark.column + 1})")
    if isinstance(exc, yaml.YAMLError):
        return ConfigError(f"YAML syntax error: {exc}")
    if isinstance(exc, OSError):
        names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
        reason = exc.strerror or str(exc) or type(exc).__name__
        return FairseqLiteError(f"{names}: {reason}" if names else reason)
    if isinstance(exc, UnicodeDecodeError):
        return FairseqLiteError(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8 "
                                "(run with --debug to see which file)")
    if isinstance(exc, ValueError):
        return FairseqLiteError(f"bad value: {exc} (run with --debug for the traceback)")
    return None


def check_output_dir(path: str, flag: str) -> None:
    """An output-folder option must name a folder (created when missing), not a file: checked before any work."""
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not os.path.isdir(existing):
        where = "" if existing == path else f" ({existing} is a file)"
        raise ConfigError(f"{flag} {path} is not a folder{where}: give a folder to write into")


def launch_training(cfg) -> Optional[float]:
    """Hand a finalised FairseqConfig to the training loop (single process, spawned or torchrun ranks)."""
    from fairseq_lite.training.distributed import call_main

    setup_logging()
    from fairseq_lite.training.train import main

    return call_main(cfg, main)
