"""Manifests at corpus scale (issue 20): parsed into arrays, never a list of line strings, with a bounded memory
per entry; the same entries, errors and batches as the line-by-line rule of fairseq's FileAudioDataset."""

import gc
import os
import tracemalloc

import numpy as np
import pytest
import torch

from fairseq_lite.data.data_utils import numpy_seed
from fairseq_lite.data.iterators import EpochBatchIterator
from fairseq_lite.data.labels import dictionary_from_labels, letters
from fairseq_lite.data.manifest import load_manifest
from fairseq_lite.data.raw_audio_dataset import FileAudioDataset
from fairseq_lite.errors import DataError
from fairseq_lite.tasks import setup_task
from fairseq_lite.tasks.fairseq_task import FairseqTask
from test_data_iterators import greedy_reference

RATE = 16000


def write_files(folder, names):
    for name in names:
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        open(os.path.join(folder, name), "wb").close()


def reference_entries(path, min_sample_size=0, max_keep_size=None, skip_missing=False):
    """fairseq's rule, line by line: ``name<TAB>size`` (a trailing \\r dropped), short or long entries and (with
    ``skip_missing``) missing files skipped; (names, sizes, 1-based line numbers, skipped 0-based indices)."""
    with open(path, encoding="utf-8", newline="") as f:
        root, *lines = [line.removesuffix("\r") for line in f.read().removesuffix("\n").split("\n")]
    kept, skipped = [], []
    for i, line in enumerate(lines):
        name, size = line.split("\t")
        size = int(size)
        missing = skip_missing and not os.path.exists(os.path.join(root, name.split(":")[0]))  # file:offset:length
        if (min_sample_size and size < min_sample_size) or (max_keep_size is not None and size > max_keep_size):
            skipped.append(i)
        elif missing:
            skipped.append(i)
        else:
            kept.append((name, size, i + 2))
    names, sizes, numbers = zip(*kept)
    return list(names), list(sizes), list(numbers), skipped


def entries(manifest):
    return ([manifest.names[i] for i in range(len(manifest))], manifest.sizes.tolist(),
            manifest.line_numbers.tolist(), manifest.skipped_indices.tolist())


def test_awkward_lines_parse_as_the_line_by_line_rule(tmp_path):
    names = ["a/x.flac", "b/caf\u00e9 y.flac", "c/\u2028odd.wav", "d/big.zip"]
    write_files(tmp_path, names)
    lines = ["a/x.flac\t1200", "b/caf\u00e9 y.flac\t 900 \r", "c/\u2028odd.wav\t50", "d/big.zip:100:2000\t3000",
             "gone/missing.flac\t5000", "a/x.flac\t000123", "d/big.zip:2100:4000\t4000\r"]
    tsv = tmp_path / "train.tsv"
    tsv.write_bytes((f"{tmp_path}\r\n" + "\n".join(lines)).encode("utf-8"))
    for options, third_line in ((dict(skip_missing=True), 4),
                                (dict(skip_missing=True, min_sample_size=100, max_keep_size=3500), 5)):
        manifest = load_manifest(str(tsv), **options)
        assert entries(manifest) == reference_entries(str(tsv), **options)
        assert manifest.root == str(tmp_path) and manifest.sizes.dtype == np.int64
        assert manifest.full_path(1) == os.path.join(tmp_path, names[1]) and manifest.where(2) == f"{tsv}:{third_line}"
    with pytest.raises(DataError) as error:
        load_manifest(str(tsv))
    assert str(error.value).startswith(f"{tsv}:6: audio file {tmp_path}/gone/missing.flac does not exist (1 of 7 ")
    tsv.write_text(f"{tmp_path}\n" + "a/x.flac\t1\n" * 1000 + "a/x.flac\t12\textra\n")
    with pytest.raises(DataError, match=r"train.tsv:1002: expected 'relative/path<TAB>num_samples', got "
                                        r"'a/x.flac\\t12\\textra'"):
        load_manifest(str(tsv))


def big_manifest(folder, lines, files=50):
    """``train.tsv`` of ``lines`` entries cycling through ``files`` real (empty) files; returns (path, sizes)."""
    names = [f"train-clean-100/{j:04d}/{j * 7:06d}/{j}-{j * 7}-{j:04d}.flac" for j in range(files)]
    write_files(folder, names)
    sizes = np.random.default_rng(0).integers(RATE, 16 * RATE, lines)
    path = os.path.join(folder, "train.tsv")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{folder}\n" + "".join(f"{names[i % files]}\t{size}\n" for i, size in enumerate(sizes.tolist())))
    return path, sizes, names


def test_200k_line_manifest_costs_arrays_not_strings(tmp_path):
    lines = 200_000
    path, sizes, names = big_manifest(str(tmp_path), lines)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    dataset = FileAudioDataset(path, RATE)
    gc.collect()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    path_bytes = sum(len(names[i % len(names)].encode()) for i in range(lines))
    assert dataset.manifest.names.buffer.nbytes == path_bytes
    beyond_paths = (kept - before - path_bytes) / lines
    assert beyond_paths < 40, beyond_paths  # offsets, sizes and line numbers: 24 bytes (a str object alone is 49+)
    assert dataset.manifest.nbytes <= kept - before
    assert peak - before < 5 * os.path.getsize(path)  # never a Python object per line while parsing either
    assert np.array_equal(dataset.sizes, sizes) and len(dataset) == lines
    i = lines - 1
    assert dataset.manifest.full_path(i) == os.path.join(tmp_path, names[i % len(names)])
    assert dataset.manifest.where(i) == f"{path}:{lines + 1}"


@pytest.mark.parametrize("pad", [False, True])
def test_batches_equal_greedy_packing_over_the_line_by_line_sizes(tmp_path, pad):
    path, _, _ = big_manifest(str(tmp_path), 3000, files=7)
    with open(path, "a") as f:  # ties in length: ordered_indices breaks them with its seeded permutation
        f.write("".join(f"train-clean-100/0001/000007/1-7-0001.flac\t{16000 + i % 3}\n" for i in range(40)))
    dataset = FileAudioDataset(path, RATE, max_sample_size=200_000, min_sample_size=20_000, pad=pad)
    _, ref_sizes, _, skipped = reference_entries(path, min_sample_size=20_000)
    assert dataset.skipped_indices.tolist() == skipped
    options = dict(max_tokens=1_400_000, max_sentences=None, max_positions=None, ignore_invalid_inputs=False,
                   required_batch_size_multiple=8, seed=3)
    got = FairseqTask._make_batches(dataset, 2, **options)
    ref_sizes = np.asarray(ref_sizes)
    with numpy_seed(3 + 2):
        order = np.lexsort((np.random.permutation(len(ref_sizes)), np.minimum(ref_sizes, 200_000)))[::-1]
    tokens = ref_sizes[order] if pad else np.minimum(ref_sizes[order], 200_000)
    assert [b.tolist() for b in got] == greedy_reference(order, tokens, 1_400_000, len(order), 8)
    ranks = [EpochBatchIterator(dataset, dataset.collater, got, num_shards=3, shard_id=r) for r in range(3)]
    shards = [r._shard_batches(shuffle=True, fix_batches_to_gpus=False) for r in ranks]
    assert sorted(np.concatenate([b for shard in shards for b in shard]).tolist()) == list(range(len(dataset)))


def test_200k_label_lines_stream_into_the_int32_buffer(tmp_path):
    """audio_finetuning's labels: encoded a chunk at a time, never a list of line strings or tensors."""
    lines = 200_000
    path, _, _ = big_manifest(str(tmp_path), lines)
    words = ["THE", "CAT", "SEES", "A", "DOG"]
    texts = [" ".join(words[(i + k) % 5] for k in range(1 + i % 4)) for i in range(lines)]
    label_path = tmp_path / "train.ltr"
    label_path.write_text("".join(letters(t) + "\n" for t in texts))
    dictionary_from_labels(letters(w) for w in words).save(str(tmp_path / "dict.ltr.txt"))
    task = setup_task({"_name": "audio_finetuning", "data": str(tmp_path), "labels": "ltr"})
    audio = FileAudioDataset(path, RATE)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = task.load_labels(str(label_path), audio)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the lengths and offsets arrays (16 bytes a line) and their temporaries; a list of the lines is 60+ a line
    assert (peak - before) / lines < 40, (peak - before) / lines
    assert len(table) == lines and table.tokens.dtype == torch.int32
    lines_read = label_path.read_text().splitlines()
    for i in (0, 1, 8191, 8192, lines - 1):
        assert torch.equal(table[i], task.target_dictionary.encode_line(lines_read[i]))
