"""The ``language_modeling`` task (fairseq's ``tasks/language_modeling.py``): next-token prediction on text.

It trains the ``transformer_lm`` that ``--w2l-decoder fairseqlm`` uses, and rebuilds the task of genuine
fairseq LM checkpoints. The data folder holds ``dict.txt`` (fairseq's format; built from the training
text when missing) and one text file per split, one sentence per line, tokens separated by spaces:
``{split}``, ``{split}.txt`` or ``{split}.tokens``. Each line is encoded with eos appended and the stream
is cut into blocks as ``--sample-break-mode`` says (fairseq's ``TokenBlockDataset``): ``none`` fixed
blocks of ``tokens_per_sample`` across lines, ``complete`` whole lines packed up to that size,
``complete_doc`` the same without crossing an empty line (a document break), ``eos`` one line per block.
A block's target is its tokens, its input the same shifted right by one (eos at the very start), so every
sentence is predicted from an eos prefix, as fairseq's LM decoder is queried. fairseq's binarized
``.bin``/``.idx`` files are not read: give the text instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from fairseq_lite.data.add_target_dataset import collate_tokens
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.data.labels import dictionary_from_labels
from fairseq_lite.dataclass import ChoiceEnum, FairseqDataclass, help_text, II
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.tasks import register_task
from fairseq_lite.tasks.fairseq_task import FairseqTask

SAMPLE_BREAK_MODE_CHOICES = ChoiceEnum(["none", "complete", "complete_doc", "eos"])
SHORTEN_METHOD_CHOICES = ChoiceEnum(["none", "truncate", "random_crop"])
TEXT_SUFFIXES = ("", ".txt", ".tokens")



@dataclass
class LanguageModelingConfig(FairseqDataclass):
    """fairseq's ``LanguageModelingConfig`` (names and defaults). Options that change what is trained
    (other targets, bos, shortening, fixed padding) are kept so that fairseq LM checkpoints load; setting
    them for training is an error."""

    data: Optional[str] = field(default=None, metadata=help_text("path to data directory (dict.txt and {split}.txt)"))
    sample_break_mode: SAMPLE_BREAK_MODE_CHOICES = field(  # type: ignore[valid-type]
        default="none", metadata=help_text("none: fixed-size blocks; complete: whole sentences up to tokens_per_sample; "
                                       "complete_doc: the same within a document; eos: one sentence per block"))
    tokens_per_sample: int = field(default=1024, metadata=help_text("max number of tokens per sample for LM dataset"))
    output_dictionary_size: int = field(default=-1, metadata=help_text("limit the size of output dictionary"))
    self_target: bool = field(default=False, metadata=help_text("include self target"))
    future_target: bool = field(default=False, metadata=help_text("include future target"))
    past_target: bool = field(default=False, metadata=help_text("include past target"))
    add_bos_token: bool = field(default=False, metadata=help_text("prepend beginning of sentence token (<s>)"))
    max_target_positions: Optional[int] = field(default=None, metadata=help_text("max number of tokens in the target"))
    shorten_method: SHORTEN_METHOD_CHOICES = field(  # type: ignore[valid-type]
        default="none", metadata=help_text("if not none, shorten sequences that exceed tokens_per_sample"))
    shorten_data_split_list: str = field(default="", metadata=help_text("comma-separated splits to shorten"))
    pad_to_fixed_length: Optional[bool] = field(default=False, metadata=help_text("pad to fixed length"))
    pad_to_fixed_bsz: Optional[bool] = field(default=False, metadata=help_text("boolean to pad to fixed batch size"))
    seed: int = II("common.seed")
    batch_size: Optional[int] = II("dataset.batch_size")
    batch_size_valid: Optional[int] = II("dataset.batch_size_valid")
    dataset_impl: Optional[str] = II("dataset.dataset_impl")
    data_buffer_size: int = II("dataset.data_buffer_size")
    tpu: bool = II("common.tpu")
    use_plasma_view: bool = II("common.use_plasma_view")
    plasma_path: Optional[str] = II("common.plasma_path")


#: Options whose non-default values change the training data in ways this task does not implement.
_TRAINING_ONLY_DEFAULTS = {
    "output_dictionary_size": -1,
    "self_target": False,
    "past_target": False,
    "add_bos_token": False,
    "shorten_method": "none",
    "pad_to_fixed_length": False,
    "pad_to_fixed_bsz": False,
}


def block_bounds(line_lengths: np.ndarray, doc_breaks: np.ndarray, block_size: int, mode: str) -> np.ndarray:
    """(N, 2) [start, end) offsets of the blocks of a token stream made of lines of ``line_lengths``.

    ``doc_breaks[i]`` is True when a document ends after line ``i`` (``complete_doc`` never packs across
    it). Lines longer than ``block_size`` stay whole in ``complete``/``complete_doc``/``eos`` (fairseq does
    the same; they are filtered by size later).
    """
    ends = np.cumsum(line_lengths)
    starts = ends - line_lengths
    total = int(ends[-1]) if len(ends) else 0
    if mode == "none":
        offsets = np.arange(0, total, block_size)
        return np.stack([offsets, np.minimum(offsets + block_size, total)], axis=1)
    if mode == "eos":
        return np.stack([starts, ends], axis=1)
    blocks: List[Tuple[int, int]] = []
    block_start, block_end = None, None
    for start, end, doc_end in zip(starts.tolist(), ends.tolist(), doc_breaks.tolist()):
        if block_start is not None and end - block_start > block_size:
            blocks.append((block_start, block_end))
            block_start = None
        if block_start is None:
            block_start = start
        block_end = end
        if doc_end and mode == "complete_doc":
            blocks.append((block_start, block_end))
            block_start = None
    if block_start is not None:
        blocks.append((block_start, block_end))
    return np.asarray(blocks, dtype=np.int64).reshape(-1, 2)


class LanguageModelingDataset(torch.utils.data.Dataset):
    """Blocks of a token stream as fairseq's ``MonolingualDataset`` over a ``TokenBlockDataset``.

    Item ``i``: ``target`` = the block's tokens, ``source`` = the tokens one position earlier (eos before
    the first token of the stream). The collater gives ``{"id", "nsentences", "ntokens", "net_input":
    {"src_tokens", "src_lengths"}, "target"}``, right-padded with pad.
    """

    def __init__(self, stream: np.ndarray, bounds: np.ndarray, dictionary: Dictionary, shuffle: bool):
        self.stream = torch.from_numpy(stream.astype(np.int64))
        self.bounds = bounds
        self.sizes = (bounds[:, 1] - bounds[:, 0]).astype(np.int64)
        self.pad = dictionary.pad()
        self.eos = dictionary.eos()
        self.shuffle = shuffle

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        start, end = (int(x) for x in self.bounds[index])
        target = self.stream[start:end]
        if start == 0:
            source = torch.cat([torch.tensor([self.eos]), self.stream[: end - 1]])
        else:
            source = self.stream[start - 1 : end - 1]
        return {"id": index, "source": source, "target": target}

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        return self.sizes[indices]

    def size(self, index: int) -> int:
        return int(self.sizes[index])

    def ordered_indices(self) -> np.ndarray:
        """Shortest first, ties in random order when shuffling (fairseq's MonolingualDataset)."""
        if not self.shuffle:
            return np.argsort(self.sizes, kind="stable")
        return np.lexsort((np.random.permutation(len(self)), self.sizes))

    def filter_indices_by_size(self, indices: np.ndarray, max_sizes: Any):
        """(kept, dropped) indices: blocks longer than ``max_sizes`` tokens are dropped."""
        if max_sizes is None:
            return indices, np.zeros(0, dtype=np.int64)
        too_long = self.sizes[indices] > int(max_sizes)
        return indices[~too_long], indices[too_long]

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        if not samples:
            return {}
        sources = [s["source"] for s in samples]
        targets = [s["target"] for s in samples]
        return {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": sum(len(t) for t in targets),
            "net_input": {
                "src_tokens": collate_tokens(sources, self.pad),
                "src_lengths": torch.tensor([len(s) for s in sources]),
            },
            "target": collate_tokens(targets, self.pad),
        }


def find_split_file(data: str, split: str) -> str:
    """The text file of ``split`` in ``data``: ``{split}``, ``{split}.txt`` or ``{split}.tokens``."""
    for suffix in TEXT_SUFFIXES:
        path = os.path.join(data, split + suffix)
        if os.path.isfile(path):
            return path
    if os.path.isfile(os.path.join(data, f"{split}.bin")):
        raise DataError(
            f"{data}/{split}.bin is fairseq-preprocess binarized data, which fairseq_lite does not read: "
            f"put the text (one sentence per line) in {data}/{split}.txt"
        )
    raise DataError(f"no text for split '{split}' in {data}: expected {split}.txt (one sentence per line)")


def read_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


@register_task("language_modeling", dataclass=LanguageModelingConfig)
class LanguageModelingTask(FairseqTask):
    """Train a language model on text; its dictionary is ``{data}/dict.txt`` (kept in the task state)."""

    def __init__(self, cfg: LanguageModelingConfig):
        super().__init__(cfg)
        self._dictionary: Optional[Dictionary] = None

    @property
    def dictionary(self) -> Dictionary:
        """``dict.txt`` of the data folder, the checkpoint's when restored, else built from the train text."""
        if self._dictionary is None:
            if not self.cfg.data:
                raise ConfigError("language_modeling needs task.data: a folder with dict.txt and {split}.txt")
            path = os.path.join(self.cfg.data, "dict.txt")
            if os.path.isfile(path):
                self._dictionary = Dictionary.load(path)
            else:
                self._dictionary = dictionary_from_labels(read_lines(find_split_file(self.cfg.data, "train")))
        return self._dictionary

    @property
    def source_dictionary(self) -> Dictionary:
        return self.dictionary

    @property
    def target_dictionary(self) -> Dictionary:
        return self.dictionary

    def max_positions(self) -> int:
        return self.cfg.max_target_positions or self.cfg.tokens_per_sample

    def state_dict(self) -> Dict[str, Any]:
        return {"dictionary": self.dictionary}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("dictionary") is not None:
            self._dictionary = state["dictionary"]

    def load_dataset(self, split: str, combine: bool = False, epoch: int = 1, **kwargs: Any) -> None:
        """Encode ``{data}/{split}.txt`` and cut it into blocks (see the module docstring)."""
        cfg = self.cfg
        for key, default in _TRAINING_ONLY_DEFAULTS.items():
            if getattr(cfg, key) != default:
                raise ConfigError(f"task.{key}={getattr(cfg, key)} is not supported by fairseq_lite's "
                                  f"language_modeling: leave it at {default}")
        if not cfg.data:
            raise ConfigError("language_modeling needs task.data: a folder with dict.txt and {split}.txt")
        path = find_split_file(cfg.data, split)
        d = self.dictionary
        encoded, breaks = [], []
        for line in read_lines(path):
            if not line.strip():
                if breaks:
                    breaks[-1] = True
                continue
            encoded.append(d.encode_line(line, append_eos=True).numpy())
            breaks.append(False)
        if not encoded:
            raise DataError(f"{path} has no text")
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        bounds = block_bounds(lengths, np.asarray(breaks, dtype=bool), cfg.tokens_per_sample, cfg.sample_break_mode)
        self.datasets[split] = LanguageModelingDataset(np.concatenate(encoded), bounds, d, shuffle=True)

