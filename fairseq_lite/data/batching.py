"""Length batching (fairseq's ``data_utils.batch_by_size`` with ``max_tokens``), vectorised with numpy."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from fairseq_lite.errors import DataError


def _window_max_table(tokens: np.ndarray, levels: int) -> List[np.ndarray]:
    """``table[j][s]`` = max of ``tokens[s : s + 2**j]`` (clipped at the end): a sparse table for range maxima."""
    table = [tokens]
    for j in range(1, levels):
        prev, step = table[-1], 1 << (j - 1)
        shifted = np.concatenate([prev[step:], np.zeros(step, dtype=prev.dtype)])
        table.append(np.maximum(prev, shifted))
    return table


def _range_max(table: List[np.ndarray], starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Max of ``tokens[s : s + k]`` for every (s, k) pair, k ≥ 1, from the sparse table."""
    j = np.floor(np.log2(lengths)).astype(np.int64)
    out = np.empty(len(starts), dtype=table[0].dtype)
    n = len(table[0])
    for level in np.unique(j):
        sel = j == level
        s, k = starts[sel], lengths[sel]
        left = table[level][s]
        right = table[level][np.minimum(s + k - (1 << level), n - 1)]
        out[sel] = np.maximum(left, right)
    return out


def _largest_batch_sizes(tokens: np.ndarray, cap: int, max_tokens: Optional[int]) -> np.ndarray:
    """For every start s, the largest k ≤ cap with k · max(tokens[s:s+k]) ≤ max_tokens (monotone in k, so a
    binary search over a table of range maxima; direct when the lengths are in descending order)."""
    n = len(tokens)
    starts = np.arange(n)
    hi = np.minimum(cap, n - starts)
    if max_tokens is None:
        return hi
    if np.all(tokens[1:] <= tokens[:-1]):  # longest first (the usual order): each batch's first item is its longest
        return np.minimum(hi, max_tokens // tokens.astype(np.int64))
    table = _window_max_table(tokens, int(cap).bit_length())
    lo = np.ones(n, dtype=np.int64)  # one example always fits (checked by the caller)
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        s, a, b = starts[open_], lo[open_], hi[open_]
        mid = (a + b + 1) // 2
        fits = mid * _range_max(table, s, mid).astype(np.int64) <= max_tokens
        lo[open_] = np.where(fits, mid, a)
        hi[open_] = np.where(fits, b, mid - 1)


def batch_by_size(
    indices: np.ndarray,
    num_tokens: np.ndarray,
    max_tokens: Optional[int] = None,
    max_sentences: Optional[int] = None,
    required_batch_size_multiple: int = 1,
) -> List[np.ndarray]:
    """Pack ``indices`` (in order) greedily into batches with ``len(batch) * max(num_tokens) ≤ max_tokens``.

    Mirrors fairseq's ``batch_by_size`` (``--max-tokens``, ``--batch-size``,
    ``--required-batch-size-multiple``): a full batch larger than the multiple is cut down to a multiple
    of it and the rest starts the next batch. ``num_tokens[i]`` is the length of ``indices[i]``. The
    largest batch that fits at every start position is found for all positions at once (directly when
    the lengths are in descending order, as ``ordered_indices`` gives them; otherwise by binary search
    over a sparse table of range maxima), so a million utterances take about a second or less.
    """
    indices = np.asarray(indices, dtype=np.int64)
    tokens = np.asarray(num_tokens, dtype=np.int64)
    if len(tokens) and tokens.max() < 2**31:
        tokens = tokens.astype(np.int32)  # halves the sparse table's memory
    n = len(indices)
    if n == 0:
        return []
    max_tokens = int(max_tokens) if max_tokens is not None and max_tokens > 0 else None
    max_sentences = int(max_sentences) if max_sentences is not None and max_sentences > 0 else n
    mult = max(1, int(required_batch_size_multiple))
    if max_tokens is not None:
        too_long = np.flatnonzero(tokens > max_tokens)
        if len(too_long):
            i = too_long[0]
            raise DataError(
                f"example {indices[i]} has {tokens[i]} tokens (samples), more than max_tokens={max_tokens} "
                f"({len(too_long)} such examples): raise dataset.max_tokens, set task.max_sample_size, or set "
                "dataset.skip_invalid_size_inputs_valid_test=true to drop them"
            )
        cap = min(max_sentences, n, max_tokens // max(1, int(tokens.min())))
    else:
        cap = min(max_sentences, n)

    starts = np.arange(n)
    size = _largest_batch_sizes(tokens, cap, max_tokens)
    # a batch that ends because it is full is cut to a multiple of `mult`; the final batch keeps its size
    full = starts + size < n
    size = np.where(full & (size >= mult), size // mult * mult, size)

    bounds = []
    s = 0
    next_start = starts + size  # followed batch by batch, not converted to a list of n Python ints
    while s < n:
        bounds.append(s)
        s = int(next_start[s])
    ends = bounds[1:] + [n]
    return [indices[a:b] for a, b in zip(bounds, ends)]
