"""fairseq's ``{split}.tsv`` manifests: reading them, and scanning a folder to write them.

Format: the first line is the root directory; each further line is ``relative/path<TAB>num_samples``.
A manifest is parsed with numpy over its bytes, never as a list of line strings: the paths are kept as one
UTF-8 byte buffer plus int64 offsets and decoded one at a time, and sizes and line numbers are int64 arrays,
so a manifest costs 24 bytes per entry beyond its path bytes (``Manifest.nbytes``) and DataLoader workers do not
copy it page by page.
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

#: digits of a size parsed by the vectorised path (int64 holds 18 without overflow); longer ones take the slow one
MAX_SIZE_DIGITS = 18


def gather_ranges(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(the bytes of the sorted, disjoint ranges ``[starts[i], ends[i])`` of ``buffer`` back to back, their offsets)."""
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=offsets[1:])
    marks = np.zeros(len(buffer) + 1, dtype=np.int8)
    marks[starts] += 1  # starts are distinct, and so are ends: each fancy += touches an index once
    marks[ends] -= 1
    np.cumsum(marks, out=marks)  # in place: 1 inside a range, 0 outside
    return buffer[marks[:-1].view(bool)], offsets


class PathTable:
    """Immutable list of strings stored as one UTF-8 byte buffer and an offsets array; items decode on access."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray):
        self.buffer = buffer
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def subset(self, rows: np.ndarray) -> "PathTable":
        """The table of items ``rows`` (ascending), built without decoding them."""
        return PathTable(*gather_ranges(self.buffer, self.offsets[rows], self.offsets[rows + 1]))

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes + self.offsets.nbytes


@dataclass
class Manifest:
    """A loaded manifest: kept entries and the 0-based line indices (after the header) that were dropped."""

    path: str
    root: str
    names: PathTable
    sizes: np.ndarray
    line_numbers: np.ndarray  # 1-based file line of each kept entry, for error messages
    skipped_indices: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    def full_path(self, i: int) -> str:
        return os.path.join(self.root, self.names[i])

    def where(self, i: int) -> str:
        """``manifest:line`` of entry ``i``, for messages."""
        return f"{self.path}:{self.line_numbers[i]}"

    @property
    def nbytes(self) -> int:
        """Memory held by the entries' arrays (paths, offsets, sizes, line numbers, skipped indices)."""
        return self.names.nbytes + self.sizes.nbytes + self.line_numbers.nbytes + self.skipped_indices.nbytes


def read_utf8_bytes(path: str, what: str) -> bytes:
    """The bytes of a text file, checked to be UTF-8; a file that is not, or cannot be read, is a DataError naming
    it (and the line of the first bad byte). ``what`` names the file's role in messages ("manifest", ...)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if data and np.frombuffer(data, dtype=np.uint8).max() < 0x80:  # ASCII: no need to decode a copy
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: the {what} is not UTF-8 text (byte 0x{data[e.start]:02x}); convert it, "
                        f"e.g. iconv -f latin1 -t utf-8") from None
    return data


def read_utf8_lines(path: str, what: str) -> List[str]:
    """The lines of a UTF-8 text file, split at ``\\n`` only (a trailing ``\\r`` dropped), so that names holding
    other Unicode line breaks survive; errors as ``read_utf8_bytes``."""
    lines = read_utf8_bytes(path, what).decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _line_bounds(body: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(start, end) byte positions of every line of ``body``, the end before its ``\\n`` and one trailing ``\\r``."""
    ends = np.flatnonzero(body == ord("\n"))
    if len(body) and body[-1] != ord("\n"):
        ends = np.append(ends, len(body))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)[: len(ends)]
    carriage = (ends > starts) & (body[np.maximum(ends - 1, 0)] == ord("\r"))
    return starts, ends - carriage


def _parse_sizes(body: np.ndarray, starts: np.ndarray, ends: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The integers written in ``body[starts[i]:ends[i]]``, digit by digit for all lines at once; rows whose field
    is empty, longer than MAX_SIZE_DIGITS or holds a non-digit are cleared in ``ok`` (left to the slow path)."""
    length = ends - starts
    ok &= (length >= 1) & (length <= MAX_SIZE_DIGITS)
    sizes = np.zeros(len(starts), dtype=np.int64)
    for k in range(MAX_SIZE_DIGITS):
        rows = np.flatnonzero(ok & (length > k))
        if not len(rows):
            break
        digit = body[starts[rows] + k].astype(np.int64) - ord("0")
        ok[rows[(digit < 0) | (digit > 9)]] = False
        sizes[rows] = sizes[rows] * 10 + digit
    return sizes


def _parse_entries(path: str, body: np.ndarray) -> Tuple[PathTable, np.ndarray]:
    """(the relative paths, the sizes) of every line of ``body``; a malformed line is a DataError naming it.

    The usual line (one tab, then only digits) is parsed vectorised; any other goes through fairseq's rule line
    by line, which also accepts e.g. spaces around the number."""
    starts, ends = _line_bounds(body)
    tabs = np.flatnonzero(body == ord("\t"))
    first = np.searchsorted(tabs, starts)
    ntabs = np.searchsorted(tabs, ends) - first
    tab = tabs[np.minimum(first, len(tabs) - 1)] if len(tabs) else np.zeros(len(starts), dtype=np.int64)
    ok = ntabs == 1
    del tabs, first, ntabs  # a manifest's worth of int64s each: gone before the paths are gathered
    sizes = _parse_sizes(body, tab + 1, ends, ok)
    for i in np.flatnonzero(~ok).tolist():
        line = body[starts[i] : ends[i]].tobytes().decode("utf-8")
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].strip().isdigit():
            raise DataError(f"{path}:{i + 2}: expected 'relative/path<TAB>num_samples', got {line!r}")
        if int(fields[1]) >= 2**63:
            raise DataError(f"{path}:{i + 2}: {fields[1].strip()} samples is not a plausible audio length")
        sizes[i] = int(fields[1])
    return PathTable(*gather_ranges(body, starts, tab)), sizes


def _missing_files(root: str, names: PathTable, rows: np.ndarray) -> np.ndarray:
    """The ``rows`` whose file does not exist (a ``file:offset:length`` entry names its whole file, which is checked
    once for consecutive entries in it). Paths are joined as bytes, in chunks, without decoding each one."""
    missing = []
    root_bytes, buffer = os.fsencode(root), memoryview(names.buffer)
    last, last_exists = None, True
    for chunk in range(0, len(rows), 1 << 16):
        part = rows[chunk : chunk + (1 << 16)]
        for i, start, end in zip(part.tolist(), names.offsets[part].tolist(), names.offsets[part + 1].tolist()):
            real = os.path.join(root_bytes, buffer[start:end].tobytes())
            if b":" in real:
                real = os.fsencode(split_byte_range(os.fsdecode(real))[0])
            if real != last:
                last, last_exists = real, os.path.exists(real)
            if not last_exists:
                missing.append(i)
    return np.asarray(missing, dtype=np.int64)


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
    raw = read_utf8_bytes(path, "manifest")
    header_end = raw.find(b"\n") if b"\n" in raw else len(raw)
    root = raw[:header_end].decode("utf-8").removesuffix("\r")
    if not root:
        raise DataError(f"{path}:1: the first line must be the root directory of the audio files")
    names, sizes = _parse_entries(path, np.frombuffer(raw, dtype=np.uint8)[header_end + 1 :])
    keep = np.ones(len(sizes), dtype=bool)
    if min_sample_size:
        keep &= sizes >= min_sample_size
    if max_keep_size is not None:
        keep &= sizes <= max_keep_size
    missing = _missing_files(root, names, np.flatnonzero(keep)) if check_files else np.zeros(0, dtype=np.int64)
    if len(missing) and not skip_missing:
        raise DataError(
            f"{path}:{missing[0] + 2}: audio file {os.path.join(root, names[missing[0]])} does not exist "
            f"({len(missing)} of {len(sizes)} listed files are missing); fix the root line or the paths, or set "
            "task.skip_invalid_audio=true"
        )
    if len(missing) and on_skip is not None:
        on_skip(f"{path}: skipped {len(missing)} listed files that do not exist (first: line {missing[0] + 2})")
    keep[missing] = False
    rows = np.flatnonzero(keep)
    if not len(rows):
        raise DataError(
            f"{path}: no usable entries ({len(sizes)} lines, {len(sizes)} dropped by size or missing files); "
            "check the manifest and task.min_sample_size (and task.max_keep_size)"
        )
    return Manifest(
        path=path,
        root=root,
        names=names if len(rows) == len(sizes) else names.subset(rows),
        sizes=sizes[rows] if len(rows) < len(sizes) else sizes,
        line_numbers=rows + 2,
        skipped_indices=np.flatnonzero(~keep),
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
