"""Output files that a failed run never leaves half-written or emptied (fairseq truncates them up front)."""

from __future__ import annotations

import os
import secrets
from typing import IO, Any, List, Tuple


class AtomicOutputs:
    """Files written as one set: each goes to a temporary file beside its target, and ``commit`` renames them
    all over their targets and deletes the files passed to ``remove``. ``discard`` (or leaving the ``with``
    block by an exception) deletes the temporary files, so the files of an earlier run stay as they were."""

    def __init__(self) -> None:
        self._pending: List[Tuple[str, str, IO[Any]]] = []  # (temporary path, target, open file)
        self._stale: List[str] = []

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False

    def open(self, path: str, mode: str = "w", **kwargs: Any) -> IO[Any]:
        """An open temporary file that becomes ``path`` on commit (``mode`` is ``"w"``/``"wb"`` plus open()'s
        keywords); the folder is created when missing."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        f = open(tmp, mode.replace("w", "x"), **kwargs)
        self._pending.append((tmp, path, f))
        return f

    def remove(self, path: str) -> None:
        """Delete ``path`` (when it exists) on commit: a stale output that this run does not write."""
        self._stale.append(path)

    def commit(self) -> None:
        try:
            for _, _, f in self._pending:
                f.close()  # a full disk can fail here, on the last flush
        except BaseException:
            self.discard()
            raise
        for tmp, path, _ in self._pending:
            os.replace(tmp, path)
        for path in self._stale:
            if os.path.lexists(path):
                os.remove(path)
        self._pending, self._stale = [], []

    def discard(self) -> None:
        for tmp, _, f in self._pending:
            try:
                f.close()
            except OSError:
                pass
            if os.path.exists(tmp):
                os.remove(tmp)
        self._pending, self._stale = [], []
