"""The ``audio_pretraining`` task: raw audio from ``{data}/{split}.tsv`` (fairseq's ``audio_pretraining.py``).

With ``task.multi_corpus_keys`` a split names several corpora, ``key:file,key:file``; see ``data/multi_corpus.py``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import numpy as np

from fairseq_lite.data.multi_corpus import (MultiCorpusDataset, names_corpora, parse_corpus_keys,
                                           parse_sampling_weights, parse_split)
from fairseq_lite.data.raw_audio_dataset import AudioAugmentation, FileAudioDataset
from fairseq_lite.dataclass import ChoiceEnum, FairseqDataclass, help_text, II
from fairseq_lite.errors import ConfigError
from fairseq_lite.models.wav2vec.wav2vec2 import parse_feature_layers
from fairseq_lite.modules.masking import Masker, PrecomputedMasking
from fairseq_lite.tasks import register_task
from fairseq_lite.tasks.fairseq_task import FairseqTask

logger = logging.getLogger(__name__)

TEXT_COMPRESSION_CHOICES = ChoiceEnum(["none", "low", "high"])

#: fairseq's ``InferredW2vConfig``: the masking settings of ``task.precompute_mask_indices`` (each defaults to the
#: model config's value of the same name), then the two the frame and channel counts come from.
MASK_KEYS = ("mask_length", "mask_prob", "mask_selection", "mask_other", "no_mask_overlap", "mask_min_space",
             "mask_channel_length", "mask_channel_prob", "mask_channel_selection", "mask_channel_other",
             "no_mask_channel_overlap", "mask_channel_min_space")
INFERRED_W2V_KEYS = MASK_KEYS + ("conv_feature_layers", "encoder_embed_dim")


@dataclass
class AudioPretrainingConfig(FairseqDataclass):
    """fairseq's ``AudioPretrainingConfig`` (same names and defaults) plus fairseq_lite's data options."""

    data: str = field(default="???", metadata=help_text("path to the data directory with {split}.tsv manifests"))
    labels: Optional[str] = field(default=None, metadata=help_text("extension of the label files to load, e.g. ltr"))
    multi_corpus_keys: Optional[str] = field(default=None, metadata=help_text(
        "comma-separated corpus keys (eng,fra); splits are then key:file,key:file and batches carry corpus_key"))
    multi_corpus_sampling_weights: Optional[str] = field(default=None, metadata=help_text(
        "comma-separated per-batch sampling weights of multi_corpus_keys (same order, sum 1) for the training split"))
    binarized_dataset: bool = field(default=False, metadata=help_text("not supported: binarized manifests"))
    sample_rate: int = field(default=16_000, metadata=help_text("target sample rate; other rates are resampled"))
    normalize: bool = field(default=False, metadata=help_text("zero-mean unit-variance normalise each utterance"))
    enable_padding: bool = field(default=False, metadata=help_text("pad shorter clips instead of cropping"))
    max_sample_size: Optional[int] = field(default=None, metadata=help_text("crop clips longer than this"))
    min_sample_size: Optional[int] = field(default=None, metadata=help_text("drop clips shorter than this"))
    num_batch_buckets: int = field(default=0, metadata=help_text("pad batches to this many fixed lengths (TPU)"))
    tpu: bool = II("common.tpu")
    text_compression_level: TEXT_COMPRESSION_CHOICES = field(  # type: ignore[valid-type]
        default="none", metadata=help_text("accepted for fairseq configs; labels are stored as int arrays anyway")
    )
    rebuild_batches: bool = field(default=True, metadata=help_text("rebuild the batches every epoch"))
    precompute_mask_config: Optional[Any] = field(default=None, metadata=help_text("data2vec option; ignored"))
    post_save_script: Optional[str] = field(default=None, metadata=help_text("script run after a checkpoint is saved"))
    subsample: float = field(default=1, metadata=help_text("must be 1: subsampling is not supported"))
    seed: int = II("common.seed")
    precompute_mask_indices: bool = field(default=False, metadata=help_text(
        "draw the wav2vec 2.0 masks in the collater (fairseq's TPU yamls) instead of in the model"))
    inferred_w2v_config: Optional[Any] = field(default=None, metadata=help_text(
        "the masking settings of precompute_mask_indices (fairseq's InferredW2vConfig keys); missing keys, or all "
        "when unset, come from the model config"))
    # fairseq_lite additions
    strict_sample_rate: bool = field(
        default=False, metadata=help_text("raise on a file at another sample rate (fairseq) instead of resampling it")
    )
    skip_invalid_audio: bool = field(
        default=False, metadata=help_text("skip missing, corrupt or empty audio files (counted in warnings)")
    )
    augment_noise_prob: float = field(default=0.0, metadata=help_text("train: probability of adding white noise"))
    augment_snr_min_db: float = field(default=5.0, metadata=help_text("train: lowest SNR of the added noise"))
    augment_snr_max_db: float = field(default=30.0, metadata=help_text("train: highest SNR of the added noise"))
    augment_shift_max_ms: float = field(default=0.0, metadata=help_text("train: random circular shift up to ± ms"))
    augment_gain_max_db: float = field(default=0.0, metadata=help_text("train: random gain up to ± dB"))


@register_task("audio_pretraining", dataclass=AudioPretrainingConfig)
class AudioPretrainingTask(FairseqTask):
    """Self-supervised training on raw audio; no dictionaries."""

    def __init__(self, cfg: AudioPretrainingConfig):
        super().__init__(cfg)
        self.model_cfg: Optional[Any] = None  # set by build_model: fills task.inferred_w2v_config's missing keys
        self._mask_difference_logged = False
        keys, _ = corpus_options(cfg)  # bad keys or weights fail now, not at the first load_dataset
        if keys is None and cfg.multi_corpus_sampling_weights is not None:  # e.g. MMS's model_overrides
            logger.warning("task.multi_corpus_sampling_weights is ignored: task.multi_corpus_keys is not set")
        unsupported = {
            "binarized_dataset": cfg.binarized_dataset,
            "subsample": cfg.subsample != 1,
        }
        for key, is_set in unsupported.items():
            if is_set:
                raise ConfigError(f"task.{key} is not supported by fairseq_lite: remove it or write a manifest with the data you want")

    def augmentation(self, split: str) -> Optional[AudioAugmentation]:
        """The training augmentation, for manifests whose name starts with ``train``; None otherwise."""
        if not os.path.basename(split).startswith("train"):
            return None
        cfg = self.cfg
        return AudioAugmentation(
            noise_prob=cfg.augment_noise_prob,
            snr_min_db=cfg.augment_snr_min_db,
            snr_max_db=cfg.augment_snr_max_db,
            shift_max_ms=cfg.augment_shift_max_ms,
            gain_max_db=cfg.augment_gain_max_db,
        )

    def load_dataset(self, split: str, task_cfg: Optional[Any] = None, combine: bool = False, **kwargs: Any) -> None:
        """``self.datasets[split]`` = the corpus ``{data}/{split}.tsv``; with ``task.multi_corpus_keys``, a
        MultiCorpusDataset over the ``key:file`` entries of ``split``, whose corpora are drawn with the sampling
        weights when ``combine`` (the trainer's training split) and taken whole otherwise."""
        cfg = task_cfg or self.cfg
        keys, weights = corpus_options(cfg)
        if keys is None:
            if names_corpora(cfg.data, split):
                raise ConfigError(f"split {split!r} is written key:file but task.multi_corpus_keys is not set: set it "
                                  f"to the corpus keys, e.g. task.multi_corpus_keys={split.partition(':')[0]}")
            self.datasets[split] = self.load_corpus(cfg, split)
            return
        entries = parse_split(split, keys)
        if combine and len(entries) > 1 and weights is None:
            raise ConfigError(f"training on several corpora ({split}) needs task.multi_corpus_sampling_weights: one "
                              "weight per key of task.multi_corpus_keys (examples/wav2vec/multi_corpus_weights.py "
                              "writes them from the manifests)")
        split_weights = [weights[e.corpus_key] for e in entries] if combine and len(entries) > 1 else None
        if split_weights is not None and sum(split_weights) <= 0:
            raise ConfigError(f"every corpus of the training split {split} has sampling weight 0: give one a weight")
        self.datasets[split] = MultiCorpusDataset(
            [self.load_corpus(cfg, e.name) for e in entries],
            corpus_keys=[e.corpus_key for e in entries],
            names=[f"{e.key}:{e.name}" for e in entries],
            weights=split_weights,
        )

    def load_corpus(self, cfg: Any, name: str) -> Any:
        """The FileAudioDataset of ``{data}/{name}.tsv``."""
        pad = cfg.labels is not None or cfg.enable_padding
        return FileAudioDataset(
            manifest_path=os.path.join(cfg.data, f"{name}.tsv"),
            sample_rate=cfg.sample_rate,
            max_sample_size=cfg.max_sample_size,
            min_sample_size=cfg.min_sample_size,
            pad=pad,
            normalize=cfg.normalize,
            num_buckets=cfg.num_batch_buckets or int(cfg.tpu and pad),  # one bucket on TPU: static shapes
            strict_sample_rate=cfg.strict_sample_rate,
            skip_invalid=cfg.skip_invalid_audio,
            augment=self.augmentation(name),
            seed=cfg.seed,
            mask_precompute=self.mask_precompute(cfg) if cfg.precompute_mask_indices else None,
        )

    def mask_precompute(self, cfg: Any) -> PrecomputedMasking:
        """The collater's masking from ``task.inferred_w2v_config`` (fairseq's dataset settings: 2 spans at least,
        every row the same count, no mask_dropout); differences from the model's own settings are logged once."""
        values = inferred_w2v_settings(cfg.inferred_w2v_config, self.model_cfg)
        masker = Masker(**{k: values[k] for k in MASK_KEYS}, require_same_masks=True, mask_dropout=0.0)
        if self.model_cfg is not None and not self._mask_difference_logged:
            self._mask_difference_logged = log_mask_differences(values, self.model_cfg)
        layers = tuple(parse_feature_layers(values["conv_feature_layers"]))
        return PrecomputedMasking(masker, layers, int(values["encoder_embed_dim"]))

    @staticmethod
    def _make_batches(dataset: Any, epoch: int, *, seed: int, **options: Any) -> List[np.ndarray]:
        """FairseqTask's batches, built corpus by corpus for a MultiCorpusDataset (one corpus per batch)."""
        if isinstance(dataset, MultiCorpusDataset):
            return dataset.batches(epoch, seed, lambda corpus: FairseqTask._make_batches(
                corpus, epoch, seed=seed, **options))
        return FairseqTask._make_batches(dataset, epoch, seed=seed, **options)

    def max_positions(self):
        return sys.maxsize, sys.maxsize

    def build_model(self, cfg: Any, from_checkpoint: bool = False):
        """Build the model and copy its resolved ``w2v_args`` back into ``cfg`` (saved in fine-tuned checkpoints)."""
        model = super().build_model(cfg, from_checkpoint)
        self.model_cfg = cfg
        store_resolved_w2v_args(cfg, model)
        return model


def corpus_options(cfg: Any) -> Tuple[Optional[List[str]], Optional[List[float]]]:
    """(keys, weights) of ``task.multi_corpus_keys``/``multi_corpus_sampling_weights``, checked; (None, None) without
    keys, whatever the weights (fairseq ignores them then; MMS's infer_common.yaml unsets the keys alone)."""
    if cfg.multi_corpus_keys is None:
        return None, None
    keys = parse_corpus_keys(cfg.multi_corpus_keys)
    return keys, parse_sampling_weights(cfg.multi_corpus_sampling_weights, keys)


def inferred_w2v_settings(given: Any, model_cfg: Any) -> dict:
    """``task.inferred_w2v_config`` with every ``INFERRED_W2V_KEYS`` entry, the missing ones (all when it is unset;
    fairseq stops then) from ``model_cfg`` as fairseq's ``II("model.<key>")`` defaults; choice enums as names."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(INFERRED_W2V_KEYS))
    if unknown:
        raise ConfigError(f"task.inferred_w2v_config has unknown key(s) {', '.join(unknown)}: use fairseq's "
                          f"{', '.join(INFERRED_W2V_KEYS)}")
    values = {}
    for key in INFERRED_W2V_KEYS:
        if key not in given and not hasattr(model_cfg, key):
            where = "no model is built yet" if model_cfg is None else "the model config has no such field"
            raise ConfigError(f"task.precompute_mask_indices: task.inferred_w2v_config.{key} is not set and {where}: "
                              "set it (a wav2vec2 model config supplies all of them)")
        value = given[key] if key in given else getattr(model_cfg, key)
        values[key] = str(value) if key.endswith("selection") or key == "conv_feature_layers" else value
    return values


def log_mask_differences(values: dict, model_cfg: Any) -> bool:
    """Log (once, returns True) the masking settings where ``task.inferred_w2v_config`` and the model differ: the
    collater's masks follow the task, the model applies them only where its own mask_prob / mask_channel_prob > 0
    (fairseq's behaviour)."""
    differ = [f"{k}={values[k]!r} (model: {getattr(model_cfg, k)!r})" for k in MASK_KEYS
              if str(values[k]) != str(getattr(model_cfg, k, values[k]))]
    if differ:
        logger.warning("task.precompute_mask_indices: the masks follow task.inferred_w2v_config where it differs "
                       "from the model: %s; the model uses time masks only with model.mask_prob > 0 and channel "
                       "masks only with model.mask_channel_prob > 0 and mask_channel_before=false, as fairseq",
                       ", ".join(differ))
    return True


def store_resolved_w2v_args(cfg: Any, model: Any) -> None:
    """Copy a fine-tuning model's resolved pretraining config (``model.cfg.w2v_args``) into ``cfg``, so that its
    checkpoints hold it and load without ``w2v_path``."""
    built_cfg = getattr(model, "cfg", None)
    if built_cfg is not None and hasattr(built_cfg, "w2v_args") and hasattr(cfg, "w2v_args"):
        cfg.w2v_args = built_cfg.w2v_args
