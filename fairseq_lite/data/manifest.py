"""fairseq's ``{split}.tsv`` manifests: reading them, and scanning a folder to write them.

Format: the first line is the root directory; each further line is ``relative/path<TAB>num_samples``.
Paths are kept as one UTF-8 byte buffer plus offsets, so a million-line manifest costs a few dozen MB
and DataLoader workers do not copy it page by page.
"""

from __future__ import annotations

import contextlib
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Tuple

import numpy as np

from fairseq_lite.data.audio import audio_frames, split_byte_range
from fairseq_lite.errors import DataError
from fairseq_lite.file_io import AtomicOutputs


class PathTable:
    """Immutable list of strings stored as one byte buffer and an offsets array."""

    def __init__(self, paths: Iterable[str]):
        encoded = [p.encode("utf-8") for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")


@dataclass
class Manifest:
    """A loaded manifest: kept entries and the 0-based line indices (after the header) that were dropped."""

    path: str
    root: str
    names: PathTable
    sizes: np.ndarray
    line_numbers: np.ndarray  # 1-based file line of each kept entry, for error messages
    skipped_indices: np.ndarray

    def full_path(self, i: int) -> str:
        return os.path.join(self.root, self.names[i])

    def where(self, i: int) -> str:
        """``manifest:line`` of entry ``i``, for messages."""
        return f"{self.path}:{self.line_numbers[i]}"


def read_utf8_lines(path: str, what: str) -> List[str]:
    """The lines of a UTF-8 text file, split at ``\\n`` only (a trailing ``\\r`` dropped), so that names holding
    other Unicode line breaks survive; a file that is not UTF-8 or cannot be read is a DataError naming it
    (and the line of the first bad byte). ``what`` names the file's role in messages ("manifest", ...)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: the {what} is not UTF-8 text (byte 0x{data[e.start]:02x}); convert it, "
                        f"e.g. iconv -f latin1 -t utf-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def load_manifest(
    path: str,
    min_sample_size: int = 0,
    check_files: bool = True,
    skip_missing: bool = False,
    on_skip: Optional[Callable[[str], None]] = None,
    max_keep_size: Optional[int] = None,
) -> Manifest:
    """Read ``path``; entries shorter than ``min_sample_size`` or longer than ``max_keep_size`` are ``skipped_indices``.

    With ``check_files`` every listed file must exist: a missing one is a DataError naming the line
    and path, or, with ``skip_missing``, is dropped like a short one and counted.
    """
    if not os.path.exists(path):
        raise DataError(f"manifest {path} does not exist: write it with examples/wav2vec/wav2vec_manifest.py")
    root, *lines = read_utf8_lines(path, "manifest") or [""]
    if not root:
        raise DataError(f"{path}:1: the first line must be the root directory of the audio files")
    names: List[str] = []
    sizes: List[int] = []
    numbers: List[int] = []
    skipped: List[int] = []
    missing: List[Tuple[int, str]] = []
    for i, line in enumerate(lines):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].strip().isdigit():
            raise DataError(f"{path}:{i + 2}: expected 'relative/path<TAB>num_samples', got {line!r}")
        size = int(fields[1])
        if (min_sample_size and size < min_sample_size) or (max_keep_size is not None and size > max_keep_size):
            skipped.append(i)
            continue
        if check_files and not os.path.exists(split_byte_range(os.path.join(root, fields[0]))[0]):
            missing.append((i, fields[0]))
            if skip_missing:
                skipped.append(i)
                continue
        names.append(fields[0])
        sizes.append(size)
        numbers.append(i + 2)
    if missing and not skip_missing:
        i, name = missing[0]
        raise DataError(
            f"{path}:{i + 2}: audio file {os.path.join(root, name)} does not exist ({len(missing)} of {len(lines)} "
            "listed files are missing); fix the root line or the paths, or set task.skip_invalid_audio=true"
        )
    if missing and on_skip is not None:
        on_skip(f"{path}: skipped {len(missing)} listed files that do not exist (first: line {missing[0][0] + 2})")
    if not names:
        raise DataError(
            f"{path}: no usable entries ({len(lines)} lines, {len(skipped)} dropped by size or missing files); "
            "check the manifest and task.min_sample_size (and task.max_keep_size)"
        )
    return Manifest(
        path=path,
        root=root,
        names=PathTable(names),
        sizes=np.asarray(sizes, dtype=np.int64),
        line_numbers=np.asarray(numbers, dtype=np.int64),
        skipped_indices=np.asarray(sorted(skipped), dtype=np.int64),
    )


# -- writing (examples/wav2vec/wav2vec_manifest.py) ------------------------------------------------


@dataclass
class ScanResult:
    root: str
    train: List[Tuple[str, int]]
    valid: List[Tuple[str, int]]
    unreadable: List[Tuple[str, str]]  # (path, reason)
    seconds: float  # total audio duration of the readable files


def find_audio(root: str, ext: str, path_must_contain: Optional[str] = None) -> List[str]:
    """Files under ``root`` ending in ``.ext``, sorted (fairseq keeps filesystem order, which differs between machines).

    Symbolic links to folders are followed, but each real folder is visited once: a link loop or two links to
    one folder do not list its files again (fairseq's glob lists them once per path to them)."""
    suffix = "." + ext.lstrip(".").lower()
    found = []
    visited = set()
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
        stat = os.stat(dirpath)
        if (stat.st_dev, stat.st_ino) in visited:
            dirnames[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        dirnames.sort()  # the first path to a folder is the one listed, on every machine
        for name in files:
            if name.lower().endswith(suffix):
                full = os.path.join(dirpath, name)
                if path_must_contain is None or path_must_contain in os.path.realpath(full):
                    found.append(full)
    return sorted(found)


#: files per task of the manifest scan's worker processes
SCAN_CHUNK = 256


def unlistable_name(name: str) -> Optional[str]:
    """Why a relative path cannot be a manifest line (None when it can): the tsv has no quoting."""
    if any(c in name for c in "\t\n\r"):
        return "its name holds a tab or line break, which a .tsv manifest cannot hold: rename the file"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 (manifests are UTF-8): rename the file"
    return None


def _scan_chunk(paths: List[str]) -> List[Any]:
    """(frames, rate) of each file, or the reason it could not be read: one bad file must not stop a scan."""
    results: List[Any] = []
    for path in paths:
        problem = unlistable_name(path)
        if problem is not None:
            results.append(problem)
            continue
        try:
            results.append(audio_frames(path))
        except Exception as e:
            results.append(f"{type(e).__name__}: {str(e).strip()}")
    return results


def scan_folder(
    root: str,
    ext: str = "flac",
    valid_percent: float = 0.01,
    seed: int = 42,
    path_must_contain: Optional[str] = None,
    workers: int = 8,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> ScanResult:
    """Read frame counts of every ``*.ext`` under ``root`` (``workers`` processes) and split train/valid with ``seed``.

    The split draws one ``random.Random(seed).random()`` per file in sorted path order, as fairseq's
    tool does per file in its own order: the same seed and folder always give the same split.
    """
    if not 0 <= valid_percent <= 1:
        raise DataError(f"--valid-percent must be between 0 and 1, got {valid_percent}")
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a directory")
    files = find_audio(root, ext, path_must_contain)
    if not files:
        where = f" whose path contains {path_must_contain!r}" if path_must_contain else ""
        raise DataError(f"no *.{ext.lstrip('.')} files{where} under {root}: check the folder and --ext")

    # header parsing holds the GIL, so the workers are processes, each taking chunks of files
    chunks = [files[i:i + SCAN_CHUNK] for i in range(0, len(files), SCAN_CHUNK)]
    parallel = workers > 1 and len(chunks) > 1
    with ProcessPoolExecutor(max_workers=workers) if parallel else contextlib.nullcontext() as pool:
        results = (result for chunk in (pool.map if parallel else map)(_scan_chunk, chunks) for result in chunk)
        if progress is not None:
            results = progress(results)
        results = list(results)

    rand = random.Random(seed)
    train, valid, unreadable, seconds = [], [], [], 0.0
    for path, result in zip(files, results):
        to_valid = rand.random() < valid_percent
        if isinstance(result, str):
            unreadable.append((path, result))
            continue
        frames, rate = result
        if frames == 0:
            unreadable.append((path, "no audio samples"))
            continue
        seconds += frames / rate
        (valid if to_valid else train).append((path[len(root) + 1:], frames))  # find_audio's paths start with root
    if not train and not valid:
        raise DataError(f"none of the {len(files)} *.{ext.lstrip('.')} files under {root} could be read: {unreadable[0][1]}")
    return ScanResult(root, train, valid, unreadable, seconds)


def write_manifest(path: str, root: str, entries: List[Tuple[str, int]],
                   outputs: Optional[AtomicOutputs] = None) -> None:
    """Write a ``{split}.tsv`` (root line, then ``relpath<TAB>frames``) to a temporary file that replaces ``path``
    when ``outputs`` is committed (at once when none is given)."""
    with contextlib.nullcontext(outputs) if outputs is not None else AtomicOutputs() as out:
        with out.open(path, "w", encoding="utf-8") as f:
            f.write(root + "\n")
            for rel, frames in entries:
                f.write(f"{rel}\t{frames}\n")
