"""Files that a failed or killed run never leaves half-written or emptied (fairseq truncates them up front).

Every output goes to a temporary file of its own beside its target (``<name>.<pid>.<8 hex>.tmp``) and is
renamed over the target once complete: ``atomic_save`` / ``atomic_copy`` for checkpoints (fsynced),
``AtomicOutputs`` for a set of result files that replace the old ones together. A neutral module: training,
interop, data tools and the commands all write through it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from typing import IO, Any, BinaryIO, Callable, List, Tuple

import torch

from fairseq_lite.errors import FairseqLiteError


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: ``<name>.<pid>.<8 hex>.tmp``: the temporary file each output is written through (see ``temp_path_for``).
TEMP_NAME = re.compile(r".+\.(\d+)\.[0-9a-f]{8}\.tmp")


def temp_path_for(path: str) -> str:
    """A temporary name beside ``path`` that no other process or thread uses (pid and a random suffix)."""
    return f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _write_then_rename(path: str, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a fresh temporary file beside ``path``, fsync, rename over ``path``.

    An OSError (disk full, quota, permissions) removes the partial temporary file and becomes one
    FairseqLiteError naming ``path`` and the cause; ``path`` itself is never half written.
    """
    tmp = temp_path_for(path)
    try:
        with open(tmp, "xb") as f:  # "x": created here, mode 0o666 minus the umask, like a plain open
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        cause = exc.strerror or str(exc) or type(exc).__name__
        raise FairseqLiteError(
            f"cannot write checkpoint {path}: {cause}; the partial file was removed and the previous "
            f"{os.path.basename(path)} (if any) is intact: free space in checkpoint.save_dir or point it at another disk"
        ) from exc
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a unique temporary file, fsync, then rename over ``path`` (never a half-written ``path``).
    A Dictionary inside is pickled under fairseq's class name, so fairseq reads the file too."""
    from fairseq_lite.interop import fairseq_pickle

    _write_then_rename(path, lambda f: torch.save(obj, f, pickle_module=fairseq_pickle))


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` through a unique temporary file (as ``atomic_save``)."""
    _write_then_rename(path, lambda f: f.write(data))


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through a unique temporary file (as ``atomic_save``)."""
    with open(src, "rb") as fin:
        _write_then_rename(dst, lambda fout: shutil.copyfileobj(fin, fout, length=16 << 20))


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
        tmp = temp_path_for(path)
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
