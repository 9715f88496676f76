"""The ``audio_finetuning`` task: audio plus ``{split}.{labels}`` targets (fairseq's ``audio_finetuning.py``).

The target dictionary comes from ``{target_dictionary or data}/dict.{labels}.txt`` and is kept in the
task state, so checkpoints carry it (``task_state["target_dictionary"]``) and inference does not
depend on the data directory's copy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from fairseq_lite.data.add_target_dataset import AddTargetDataset, LabelTable
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.dataclass import help_text
from fairseq_lite.dataclass.configs import GenerationConfig
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.tasks import register_task
from fairseq_lite.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask

logger = logging.getLogger(__name__)


@dataclass
class AudioFinetuningConfig(AudioPretrainingConfig):
    """fairseq's ``AudioFinetuningConfig``. The ``eval_wer``/``eval_bleu`` options serve seq2seq models,
    which fairseq_lite does not include (the ``ctc`` criterion reports WER itself); they are accepted
    so that fairseq configs load, and turning them on is an error."""

    eval_wer: bool = field(default=False, metadata=help_text("seq2seq only: compute WER during validation"))
    eval_wer_config: GenerationConfig = field(default_factory=GenerationConfig)
    eval_wer_tokenizer: Optional[Any] = field(default=None, metadata=help_text("seq2seq only"))
    eval_wer_post_process: str = field(default="letter", metadata=help_text("seq2seq only: post_process for WER"))
    eval_bleu: bool = field(default=False, metadata=help_text("seq2seq only: compute BLEU during validation"))
    eval_bleu_detok: Optional[str] = field(default=None, metadata=help_text("seq2seq only"))
    eval_bleu_detok_args: Optional[str] = field(default="{}", metadata=help_text("seq2seq only"))
    eval_tokenized_bleu: bool = field(default=False, metadata=help_text("seq2seq only"))
    eval_bleu_remove_bpe: Optional[str] = field(default=None, metadata=help_text("seq2seq only"))
    eval_bleu_args: Optional[str] = field(default="{}", metadata=help_text("seq2seq only"))
    eval_bleu_print_samples: bool = field(default=False, metadata=help_text("seq2seq only"))
    autoregressive: bool = field(default=False, metadata=help_text("add prev_output_tokens and append eos to targets"))
    rebuild_batches: bool = True
    target_dictionary: Optional[str] = field(default=None, metadata=help_text("directory of dict.{labels}.txt, if not data"))


@register_task("audio_finetuning", dataclass=AudioFinetuningConfig)
class AudioFinetuningTask(AudioPretrainingTask):
    """Supervised (CTC) fine-tuning on audio with letter/word/BPE labels."""

    blank_symbol = "<s>"

    def __init__(self, cfg: AudioFinetuningConfig):
        super().__init__(cfg)
        for key in ("eval_wer", "eval_bleu"):
            if getattr(cfg, key):
                raise ConfigError(
                    f"task.{key}=true needs a seq2seq model, which fairseq_lite does not include; "
                    "the ctc criterion reports WER during validation"
                )
        self._target_dictionary: Optional[Dictionary] = None

    @property
    def target_dictionary(self) -> Optional[Dictionary]:
        """The label dictionary: the checkpoint's when restored, else ``dict.{labels}.txt`` from disk."""
        if self._target_dictionary is None and self.cfg.labels is not None:
            folder = self.cfg.target_dictionary or self.cfg.data
            path = os.path.join(folder, f"dict.{self.cfg.labels}.txt")
            dictionary = Dictionary.load(path)
            if len(dictionary) == dictionary.nspecial:  # a CTC head over the specials alone learns nothing
                raise DataError(
                    f"dictionary file {path} lists no symbols: write one '<symbol> <count>' line per label "
                    f"symbol of the .{self.cfg.labels} label files (scripts/make_labels.py writes it)"
                )
            self._target_dictionary = dictionary
        return self._target_dictionary

    def state_dict(self) -> Dict[str, Any]:
        return {"target_dictionary": self.target_dictionary}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("target_dictionary") is not None:
            self._target_dictionary = state["target_dictionary"]

    def load_corpus(self, cfg: Any, name: str) -> AddTargetDataset:
        """The audio of ``{data}/{name}.tsv`` with the encoded lines of ``{data}/{name}.{labels}`` as targets (for
        ``key:file`` splits, each corpus's own label file)."""
        if cfg.labels is None:
            raise ConfigError("audio_finetuning needs task.labels, e.g. task.labels=ltr")
        audio = super().load_corpus(cfg, name)
        labels = self.load_labels(os.path.join(cfg.data, f"{name}.{cfg.labels}"), audio)
        return AddTargetDataset(
            audio,
            labels,
            pad=self.target_dictionary.pad(),
            eos=self.target_dictionary.eos(),
            batch_targets=True,
            add_to_input=cfg.autoregressive,
        )

    def load_labels(self, label_path: str, audio: Any) -> LabelTable:
        """Encode the label lines kept by ``audio`` (its skipped manifest lines are skipped here too), streamed
        from the file into one int32 buffer (a corpus of millions of lines is never a list of strings)."""
        if not os.path.isfile(label_path):
            raise DataError(
                f"label file {label_path} does not exist: write it with examples/wav2vec/libri_labels.py "
                "or scripts/make_labels.py"
            )
        manifest = audio.manifest
        total = len(audio) + len(manifest.skipped_indices)
        with open(label_path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines != total:
            raise DataError(
                f"{label_path} has {lines} lines but {manifest.path} lists {total} audio files: "
                "there must be one label line per manifest entry, in the same order"
            )
        keep = np.ones(total, dtype=bool)
        keep[manifest.skipped_indices] = False
        dictionary = self.target_dictionary
        with open(label_path, encoding="utf-8") as f:
            kept = (line.rstrip("\n") for line, wanted in zip(f, keep) if wanted)
            table = LabelTable.from_lines(kept, dictionary.encode_line)
        unknown = int((table.tokens == dictionary.unk()).sum())
        if unknown:
            known = set(dictionary.symbols)
            with open(label_path, encoding="utf-8") as f:
                examples = sorted({w for line in f for w in line.split() if w not in known})[:10]
            logger.warning(
                "%s: %d label tokens are not in the dictionary and map to <unk> (e.g. %s)",
                label_path, unknown, " ".join(examples),
            )
        return table
