"""Hugging Face folders ↔ fairseq_lite checkpoints: the file side of the conversion (``scripts/convert_*_hf.py``).

``export_checkpoint_to_hf`` writes a ``Wav2Vec2ForCTC`` / ``ForPreTraining`` / ``Model`` folder (conformer
variants too) with its config, weights and, for CTC models, the tokenizer and feature-extractor files that
``transformers.pipeline("automatic-speech-recognition", model=folder)`` needs; ``import_checkpoint_from_hf``
writes a fairseq-layout checkpoint from such a folder. The key and config maps themselves are in
``interop/huggingface.py``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

from fairseq_lite.errors import ConfigError
from fairseq_lite.interop.huggingface import (
    ctc_from_hf_state_dict,
    ctc_to_hf_state_dict,
    dictionary_from_hf_vocab,
    hf_config_kwargs,
    hf_conformer_config_kwargs,
    HF_LM_HEAD_PREFIX,
    hf_vocab,
    is_conformer_config,
    StateDict,
    wav2vec2_config_from_hf,
    wav2vec2_conformer_config_from_hf,
    wav2vec2_conformer_from_hf_state_dict,
    wav2vec2_conformer_to_hf_state_dict,
    wav2vec2_from_hf_state_dict,
    wav2vec2_to_hf_state_dict,
)

logger = logging.getLogger(__name__)


#: HF's class names by head: (transformer, conformer).
_HF_CLASS_NAMES = {
    "ctc": ("Wav2Vec2ForCTC", "Wav2Vec2ConformerForCTC"),
    "pretraining": ("Wav2Vec2ForPreTraining", "Wav2Vec2ConformerForPreTraining"),
    "backbone": ("Wav2Vec2Model", "Wav2Vec2ConformerModel"),
}
#: The pretraining heads of our Wav2Vec2Model: not part of HF's bare ``Wav2Vec2Model``.
_PRETRAINING_HEADS = ("quantizer.", "project_q.", "final_proj.", "target_glu.")


def _hf_classes(conformer: bool, head: str):
    """(config class, model class) of transformers for ``head`` ('ctc', 'pretraining' or 'backbone')."""
    import transformers

    config_cls = transformers.Wav2Vec2ConformerConfig if conformer else transformers.Wav2Vec2Config
    return config_cls, getattr(transformers, _HF_CLASS_NAMES[head][int(conformer)])


def export_checkpoint_to_hf(checkpoint_path: str, out_dir: str, dictionary_path: Optional[str] = None,
                            trust_checkpoint: bool = False) -> str:
    """Write an HF folder for a fairseq/fairseq_lite ``wav2vec2`` or ``wav2vec_ctc`` checkpoint; returns the HF class.

    ``wav2vec_ctc`` becomes ``Wav2Vec2ForCTC`` with vocab.json, the tokenizer and the feature extractor, so
    ``pipeline("automatic-speech-recognition", model=out_dir)`` transcribes with it; ``wav2vec2`` becomes
    ``Wav2Vec2ForPreTraining``, or ``Wav2Vec2Model`` when it was pretrained on continuous targets
    (``quantize_targets=false``: HF's pretraining head always quantizes, so ``final_proj``/``project_q`` are left
    out). Conformers get the ``Wav2Vec2Conformer*`` twins. ``dictionary_path`` (a dict.ltr.txt) is needed only
    when a CTC checkpoint stores no dictionary."""
    from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
    from fairseq_lite.models import MODEL_REGISTRY
    from fairseq_lite.models.wav2vec.wav2vec2_asr import checkpoint_kind, pretraining_config_from

    state = load_checkpoint_to_cpu(checkpoint_path, trust_checkpoint=trust_checkpoint)
    kind = checkpoint_kind(state)
    if kind not in ("wav2vec2", "wav2vec_ctc"):
        raise ConfigError(f"{checkpoint_path} holds a '{kind}' model; only wav2vec2 and wav2vec_ctc convert to HF")
    model_cfg = state["cfg"]["model"]
    ctc = kind == "wav2vec_ctc"
    w2v_model_cfg = pretraining_config_from(model_cfg["w2v_args"])["model"] if ctc else model_cfg
    cfg = MODEL_REGISTRY.build_config(w2v_model_cfg, from_checkpoint=True)
    conformer = is_conformer_config(cfg)
    kwargs = hf_conformer_config_kwargs(cfg) if conformer else hf_config_kwargs(cfg)
    backbone_to_hf = wav2vec2_conformer_to_hf_state_dict if conformer else wav2vec2_to_hf_state_dict
    if ctc:
        head = "ctc"
        dictionary = _ctc_dictionary(state, checkpoint_path, dictionary_path)
        weights = _ctc_weights_to_hf(state["model"], model_cfg, len(dictionary), conformer)
        kwargs.update(vocab_size=len(dictionary), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      ctc_loss_reduction="sum", ctc_zero_infinity=True,
                      final_dropout=model_cfg.get("final_dropout", 0.0))
    elif cfg.quantize_targets:
        head, weights = "pretraining", backbone_to_hf(state["model"])
    else:
        head = "backbone"
        weights = backbone_to_hf({k: v for k, v in state["model"].items() if not k.startswith(_PRETRAINING_HEADS)},
                                 hf_prefix="")
        logger.warning("%s was pretrained with model.quantize_targets=false, which HF's ...ForPreTraining models cannot "
                       "compute: writing the network without its pretraining heads (final_proj, project_q)",
                       checkpoint_path)
    config_cls, model_cls = _hf_classes(conformer, head)
    hf_model = model_cls(config_cls(**kwargs))
    _load_hf_strict(hf_model, weights)
    hf_model.save_pretrained(out_dir)
    if ctc:
        save_hf_processor(out_dir, dictionary, state["cfg"].get("task") or {})
    return model_cls.__name__


def _ctc_dictionary(state: Dict[str, Any], checkpoint_path: str, dictionary_path: Optional[str]) -> Any:
    """The target dictionary: ``dictionary_path`` when given, else the one the checkpoint stores."""
    from fairseq_lite.data.dictionary import Dictionary

    if dictionary_path is not None:
        return Dictionary.load(dictionary_path)
    dictionary = (state.get("task_state") or {}).get("target_dictionary")
    if dictionary is None:
        raise ConfigError(f"{checkpoint_path} stores no target dictionary: pass the dict.ltr.txt it was trained with")
    return dictionary


def _ctc_weights_to_hf(state_dict: StateDict, model_cfg: Dict[str, Any], vocab_size: int, conformer: bool) -> StateDict:
    """A ``wav2vec_ctc`` state dict with HF names; ``blank_weight`` (blank_mode add) folded into the blank's bias."""
    weights = ctc_to_hf_state_dict(state_dict, conformer)
    outputs = weights[HF_LM_HEAD_PREFIX + "weight"].shape[0]
    if outputs != vocab_size:
        raise ConfigError(f"the dictionary has {vocab_size} symbols but the output layer {outputs}: pass the "
                          "dictionary it was trained with")
    blank_weight, blank_mode = model_cfg.get("blank_weight", 0), str(model_cfg.get("blank_mode", "add"))
    if blank_weight:
        if blank_mode != "add":
            raise ConfigError("blank_mode=set has no Hugging Face equivalent; export with blank_weight=0")
        bias = weights[HF_LM_HEAD_PREFIX + "bias"].clone()
        bias[0] += blank_weight  # HF has no blank_weight: fold the constant offset into the bias
        weights[HF_LM_HEAD_PREFIX + "bias"] = bias
    return weights


def save_hf_processor(out_dir: str, dictionary: Any, task_cfg: Dict[str, Any]) -> None:
    """What ``pipeline("automatic-speech-recognition")`` loads besides the model: vocab.json (HF's names for
    fairseq's specials, ``<pad>`` = index 0 = the CTC blank), a ``Wav2Vec2CTCTokenizer`` with the word delimiter
    ``|``, and a ``Wav2Vec2FeatureExtractor`` with ``do_normalize`` = ``task.normalize`` and the task's sample rate.

    ``return_attention_mask`` is true whatever the CNN's norm: fairseq fine-tuning pads its batches and masks the
    padding in the encoder (HF's converter turns the mask off for group-norm models, so their batched output
    would differ from fairseq's)."""
    import json
    import os

    import transformers

    os.makedirs(out_dir, exist_ok=True)
    vocab_file = os.path.join(out_dir, "vocab.json")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(hf_vocab(dictionary), f, ensure_ascii=False)
    tokenizer = transformers.Wav2Vec2CTCTokenizer(vocab_file, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                                  eos_token="</s>", word_delimiter_token="|")
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=int(task_cfg.get("sample_rate", 16000)), padding_value=0.0,
        do_normalize=bool(task_cfg.get("normalize", False)), return_attention_mask=True,
    )
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    extractor.save_pretrained(out_dir)  # preprocessor_config.json: transformers 5 keeps it inside processor_config.json


def _load_hf_strict(hf_model: Any, weights: StateDict) -> None:
    """Load mapped weights into an HF model; every HF parameter must be covered (HF's non-persistent or
    recomputed buffers aside)."""
    shapes = {k: tuple(v.shape) for k, v in hf_model.state_dict().items()}
    mismatched = [f"{k} {tuple(v.shape)} (config: {shapes[k]})" for k, v in weights.items()
                  if k in shapes and tuple(v.shape) != shapes[k]]
    if mismatched:
        raise ConfigError(f"the checkpoint's weights do not fit the {type(hf_model).__name__} its config describes: "
                          + ", ".join(mismatched[:3]))
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    if unexpected or missing:
        raise ConfigError(f"the converted weights do not fit {type(hf_model).__name__}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")


def _convertible_kind(hf_dir: str, config: Any) -> Tuple[bool, bool]:
    """(conformer?, CTC?) of an HF folder's config; anything but a wav2vec2(-conformer) ForCTC/ForPreTraining
    model is a ConfigError."""
    if config.model_type not in ("wav2vec2", "wav2vec2-conformer"):
        raise ConfigError(f"{hf_dir} holds a '{config.model_type}' model; expected wav2vec2 or wav2vec2-conformer")
    architectures = config.architectures or []
    ctc = any(a.endswith("ForCTC") for a in architectures)
    if not ctc and not any(a.endswith("ForPreTraining") for a in architectures):
        raise ConfigError(
            f"{hf_dir} holds a {'/'.join(architectures) or 'model with no architectures in config.json'}: only "
            "...ForCTC and ...ForPreTraining folders convert (a bare Wav2Vec2Model has no pretraining heads, and "
            "HF would fill them with random weights)")
    return config.model_type == "wav2vec2-conformer", ctc


def _checkpoint_state(cfg: Dict[str, Any], weights: Dict[str, Any], task_state: Dict[str, Any],
                      criterion_name: str) -> Dict[str, Any]:
    """A fairseq-layout checkpoint dict of a model that has not been trained here (no optimizer state)."""
    return {
        "args": None,
        "cfg": cfg,
        "model": {k: v.detach().clone().contiguous() for k, v in weights.items()},
        "criterion": None,
        "optimizer_history": [{"criterion_name": criterion_name, "optimizer_name": None,
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "task_state": task_state,
        "extra_state": {"train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
                        "val_loss": None, "previous_training_time": 0.0},
    }


def import_checkpoint_from_hf(hf_dir: str, out_path: str) -> str:
    """Write a fairseq-layout checkpoint (``wav2vec2`` or ``wav2vec_ctc``, with the dictionary in ``task_state``)
    for a local HF folder of ``Wav2Vec2ForPreTraining``/``ForCTC`` or their conformer twins. Returns our model name."""
    import json
    import os

    import transformers

    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.dataclass.utils import config_to_dict
    from fairseq_lite.file_io import atomic_save
    from fairseq_lite.interop.fairseq_schema import make_fairseq_readable

    config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    conformer, ctc = _convertible_kind(hf_dir, config)
    _, model_cls = _hf_classes(conformer, "ctc" if ctc else "pretraining")
    hf_model = model_cls.from_pretrained(hf_dir, local_files_only=True)
    hf_state = hf_model.state_dict()
    pretrain_model = wav2vec2_conformer_config_from_hf(config) if conformer else wav2vec2_config_from_hf(config)
    try:  # task.normalize is the feature extractor's do_normalize (saved with the processor)
        extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(hf_dir, local_files_only=True)
        normalize = bool(extractor.do_normalize)
    except OSError:
        normalize = not conformer and config.feat_extract_norm == "layer"  # what HF's converter writes
        logger.warning("%s has no feature extractor config: assuming task.normalize=%s", hf_dir, normalize)
    pretrain_task = {"_name": "audio_pretraining", "data": hf_dir, "normalize": normalize}
    data = os.path.abspath(hf_dir)
    if ctc:
        with open(os.path.join(hf_dir, "vocab.json"), encoding="utf-8") as f:
            dictionary = dictionary_from_hf_vocab(json.load(f))
        pretraining = config_to_dict(finalize_config({"task": pretrain_task, "model": pretrain_model},
                                                     from_checkpoint=True))
        pretraining["criterion"] = pretraining["lr_scheduler"] = None
        cfg = finalize_config({
            "task": {"_name": "audio_finetuning", "data": data, "labels": "ltr", "normalize": normalize},
            "model": {"_name": "wav2vec_ctc", "w2v_path": data, "w2v_args": pretraining,
                      "final_dropout": getattr(config, "final_dropout", 0.0)},
            "criterion": {"_name": "ctc", "zero_infinity": True},
        }, from_checkpoint=True)
        weights = ctc_from_hf_state_dict(hf_state, conformer)
        task_state = {"target_dictionary": dictionary}
        name, criterion_name = "wav2vec_ctc", "CtcCriterion"
    else:
        cfg = finalize_config({"task": {**pretrain_task, "data": data}, "model": pretrain_model,
                               "criterion": {"_name": "wav2vec", "infonce": True}}, from_checkpoint=True)
        weights = (wav2vec2_conformer_from_hf_state_dict if conformer else wav2vec2_from_hf_state_dict)(hf_state)
        task_state = {}
        name, criterion_name = "wav2vec2", "Wav2vecCriterion"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_save(make_fairseq_readable(_checkpoint_state(config_to_dict(cfg), weights, task_state, criterion_name)),
                out_path)
    return name
