"""What every fairseq_lite command does around its work: logging set-up and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, List, Optional

from fairseq_lite.errors import FairseqLiteError

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """fairseq's log line format, on stdout (what users grep their logs for)."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S", level=level, stream=sys.stdout)


def wants_traceback(argv: List[str]) -> bool:
    return "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


def run_cli(main: Callable[[List[str]], Optional[int]], argv: Optional[List[str]] = None) -> None:
    """Run ``main(argv)``; a FairseqLiteError becomes ``error: <message>`` on stderr and its exit code.

    Configuration errors exit 2, runtime errors 1. ``--debug`` or ``HYDRA_FULL_ERROR=1`` shows the
    traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = wants_traceback(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        code = main(argv)
    except FairseqLiteError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def launch_training(cfg) -> Optional[float]:
    """Hand a finalised FairseqConfig to the training loop (single process, spawned or torchrun ranks)."""
    from fairseq_lite.training.distributed import call_main

    setup_logging()
    from fairseq_lite.training.train import main

    return call_main(cfg, main)
