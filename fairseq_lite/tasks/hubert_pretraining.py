"""The ``hubert_pretraining`` task: audio of ``{data}/{split}.tsv`` with ``{label_dir}/{split}.{label}`` label files
(fairseq's ``hubert_pretraining.py``), for HuBERT pretraining (frame labels, e.g. k-means units ``km``) and, with
``fine_tuning``, for CTC fine-tuning on sequence labels (``ltr``).

Each label set has its ``dict.{label}.txt`` in ``label_dir`` (``data`` when unset). The dictionaries are the task
state, saved in checkpoints as fairseq saves them (``task_state["dictionaries"]``, or
``task_state["target_dictionary"]`` when fine-tuning), so a checkpoint does not need the label folder again.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.data.hubert_dataset import HubertDataset
from fairseq_lite.dataclass import FairseqDataclass, field_like, help_text
from fairseq_lite.errors import DataError
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.tasks import register_task
from fairseq_lite.tasks.audio_pretraining import AudioPretrainingConfig, store_resolved_w2v_args
from fairseq_lite.tasks.fairseq_task import FairseqTask

logger = logging.getLogger(__name__)

_audio = functools.partial(field_like, AudioPretrainingConfig)


@dataclass
class HubertPretrainingConfig(FairseqDataclass):
    """fairseq's ``HubertPretrainingConfig`` (same names and defaults) plus fairseq_lite's audio options."""

    data: str = _audio("data")
    fine_tuning: bool = field(default=False, metadata=help_text("fine-tuning HuBERT (sequence labels, CTC)"))
    labels: List[str] = field(default_factory=lambda: ["ltr"], metadata=help_text(
        "extensions of the label files: frame labels for pretraining (km), a sequence label for fine-tuning (ltr)"))
    label_dir: Optional[str] = field(default=None, metadata=help_text(
        "folder of the label files and dict.{label}.txt, if not data"))
    label_rate: float = field(default=-1.0, metadata=help_text("label frames per second; -1.0 for sequence labels"))
    sample_rate: int = _audio("sample_rate")
    normalize: bool = _audio("normalize")
    enable_padding: bool = field(default=False, metadata=help_text(
        "no effect, as in fairseq (its HubertDataset never reads it): use pad_audio"))
    max_keep_size: Optional[int] = field(default=None, metadata=help_text("drop utterances longer than this"))
    max_sample_size: Optional[int] = field(default=None, metadata=help_text("crop the batch's audio to at most this"))
    min_sample_size: Optional[int] = field(default=None, metadata=help_text("drop utterances shorter than this"))
    single_target: Optional[bool] = field(default=False, metadata=help_text(
        "batches hold target/target_lengths/ntokens of the one label set, as the ctc criterion reads"))
    random_crop: Optional[bool] = field(default=True, metadata=help_text(
        "crop at a random place (else from the beginning)"))
    pad_audio: Optional[bool] = field(default=False, metadata=help_text(
        "pad the audio to the longest of the batch instead of cropping it to the shortest (always, for sequence "
        "labels)"))
    # fairseq_lite additions
    strict_sample_rate: bool = _audio("strict_sample_rate")
    skip_invalid_audio: bool = _audio("skip_invalid_audio")
    seed: int = _audio("seed")


def load_label_dictionary(path: str, label: str) -> Dictionary:
    """``dict.{label}.txt``; a missing one, or one that lists no labels, is a DataError saying how to write it."""
    if label == "km":
        how = ("write it from the k-means model: python examples/hubert/simple_kmeans/write_km_dict.py "
               f"{os.path.dirname(path) or '.'} KM_PATH (one 'i 1' line per cluster)")
    else:
        how = f"write one '<symbol> <count>' line per symbol of the .{label} files (scripts/make_labels.py writes it)"
    if not os.path.isfile(path):
        raise DataError(f"dictionary file {path} does not exist: {how}")
    dictionary = Dictionary.load(path)
    if len(dictionary) == dictionary.nspecial:  # every label would be <unk>: training learns nothing (fairseq PR #4521)
        raise DataError(f"dictionary file {path} lists no labels: {how}")
    return dictionary


@register_task("hubert_pretraining", dataclass=HubertPretrainingConfig)
class HubertPretrainingTask(FairseqTask):
    """HuBERT pretraining on label sets (``dictionaries``), or fine-tuning on one (``target_dictionary``)."""

    blank_symbol = "<s>"

    def __init__(self, cfg: HubertPretrainingConfig):
        super().__init__(cfg)
        self.fine_tuning = cfg.fine_tuning
        self.state: Dict[str, Any] = {}  # fairseq's task state: the dictionaries, loaded on first use
        if cfg.enable_padding and not cfg.pad_audio:
            logger.warning("task.enable_padding has no effect in hubert_pretraining (nor in fairseq): set "
                           "task.pad_audio=true to pad the audio instead of cropping it")

    def get_label_dir(self) -> str:
        return self.cfg.data if self.cfg.label_dir is None else self.cfg.label_dir

    def load_dictionaries(self) -> List[Dictionary]:
        """``dict.{label}.txt`` of every label set, from ``label_dir`` (fairseq's ``load_dictionaries``)."""
        return [load_label_dictionary(os.path.join(self.get_label_dir(), f"dict.{label}.txt"), label)
                for label in self.cfg.labels]

    def _state_entry(self, key: str) -> Any:
        if key not in self.state:
            dictionaries = self.load_dictionaries()
            self.state[key] = dictionaries[0] if key == "target_dictionary" else dictionaries
        return self.state[key]

    @property
    def dictionaries(self) -> Optional[List[Dictionary]]:
        """One Dictionary per label set when pretraining (None when fine-tuning)."""
        return None if self.fine_tuning else self._state_entry("dictionaries")

    @property
    def target_dictionary(self) -> Optional[Dictionary]:
        """The fine-tuning labels' Dictionary (None when pretraining)."""
        return self._state_entry("target_dictionary") if self.fine_tuning else None

    def state_dict(self) -> Dict[str, Any]:
        self._state_entry("target_dictionary" if self.fine_tuning else "dictionaries")
        return dict(self.state)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.state.update(state)

    def load_dataset(self, split: str, task_cfg: Optional[Any] = None, **kwargs: Any) -> None:
        """``self.datasets[split]``: a HubertDataset of ``{data}/{split}.tsv`` and ``{label_dir}/{split}.{label}``."""
        cfg = task_cfg or self.cfg
        dictionaries = [self.target_dictionary] if self.fine_tuning else self.dictionaries
        self.datasets[split] = HubertDataset(
            os.path.join(cfg.data, f"{split}.tsv"),
            sample_rate=cfg.sample_rate,
            label_paths=[os.path.join(self.get_label_dir(), f"{split}.{label}") for label in cfg.labels],
            label_rates=cfg.label_rate,
            dictionaries=dictionaries,
            max_keep_sample_size=cfg.max_keep_size,
            min_keep_sample_size=cfg.min_sample_size,
            max_sample_size=cfg.max_sample_size,
            pad_audio=cfg.pad_audio or self.fine_tuning or cfg.single_target,  # never crop a transcript (PR #3998)
            normalize=cfg.normalize,
            random_crop=cfg.random_crop,
            single_target=cfg.single_target,
            strict_sample_rate=cfg.strict_sample_rate,
            skip_invalid=cfg.skip_invalid_audio,
            seed=cfg.seed,
        )

    def max_positions(self) -> Tuple[int, int]:
        return sys.maxsize, sys.maxsize

    def build_model(self, cfg: Any, from_checkpoint: bool = False):
        """Build the model; a fine-tuning model's resolved ``w2v_args`` go into ``cfg`` (fairseq leaves them out of
        hubert_ctc checkpoints, which then need ``w2v_path`` to load), and the pretraining ``dictionaries`` read
        from ``w2v_path`` into the task state: saved in ``task_state``, they let genuine fairseq's HubertEncoder
        (which hands this task's state to the pretraining task) build the model without the pretraining
        ``label_dir``."""
        w2v_path = getattr(cfg, "w2v_path", None) if getattr(cfg, "w2v_args", None) is None else None
        model = super().build_model(cfg, from_checkpoint)
        store_resolved_w2v_args(cfg, model)
        if self.fine_tuning and w2v_path and "dictionaries" not in self.state:
            pretraining_state = load_checkpoint_to_cpu(w2v_path).get("task_state") or {}
            if pretraining_state.get("dictionaries"):
                self.state["dictionaries"] = pretraining_state["dictionaries"]
        return model
