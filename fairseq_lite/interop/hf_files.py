"""Hugging Face folders ↔ fairseq_lite checkpoints: the file side of the conversion (``scripts/convert_*_hf.py``).

``export_checkpoint_to_hf`` writes a ``Wav2Vec2ForCTC`` / ``ForPreTraining`` / ``Model`` folder (conformer
variants too) with its config, weights and, for CTC models, the tokenizer and feature-extractor files that
``transformers.pipeline("automatic-speech-recognition", model=folder)`` needs; ``import_checkpoint_from_hf``
writes a fairseq-layout checkpoint from such a folder. MMS models with language adapters (``layer_type=trf_adp``)
go both ways as HF's ``adapter_attn_dim`` models with one ``adapter.<lang>.safetensors`` per language, which
``model.load_adapter(lang)`` reads. w2v-BERT 2.0 goes both ways as ``Wav2Vec2BertModel`` / ``Wav2Vec2BertForCTC``
with HF's ``SeamlessM4TFeatureExtractor``. The key and config maps themselves are in ``interop/huggingface.py``
(``interop/huggingface_w2v_bert.py`` for w2v-BERT).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from fairseq_lite.data.multi_corpus import parse_corpus_keys
from fairseq_lite.errors import ConfigError
from fairseq_lite.interop.huggingface import (
    adapter_row_to_hf,
    adapters_from_hf,
    CTC_BACKBONE_PREFIX,
    ctc_from_hf_state_dict,
    ctc_to_hf_state_dict,
    dictionary_from_hf_vocab,
    hf_config_kwargs,
    hf_conformer_config_kwargs,
    HF_ADAPTER_FILE,
    hf_adapter_kwargs,
    HF_CONFORMER_PREFIX,
    HF_HUBERT_PREFIX,
    hf_hubert_config_kwargs,
    HF_LM_HEAD_PREFIX,
    hf_vocab,
    hubert_config_from_hf,
    HUBERT_DEFAULT_LABEL_RATE,
    is_conformer_config,
    split_adapters,
    StateDict,
    wav2vec2_config_from_hf,
    wav2vec2_conformer_config_from_hf,
    wav2vec2_conformer_from_hf_state_dict,
    wav2vec2_conformer_to_hf_state_dict,
    wav2vec2_from_hf_state_dict,
    wav2vec2_to_hf_state_dict,
)
from fairseq_lite.interop.huggingface_w2v_bert import (
    hf_w2v_bert_adapter_kwargs,
    hf_w2v_bert_config_kwargs,
    w2v_bert_adapter_config_from_hf,
    W2V_BERT_BACKBONE_PREFIXES,
    w2v_bert_config_from_hf,
    w2v_bert_ctc_from_hf_state_dict,
    w2v_bert_ctc_to_hf_state_dict,
    w2v_bert_from_hf_state_dict,
    w2v_bert_to_hf_state_dict,
    with_mask_emb,
)

logger = logging.getLogger(__name__)


#: HF's class names by family and head; the families are wav2vec2, conformer and hubert.
_HF_CLASS_NAMES = {
    "wav2vec2": {"ctc": "Wav2Vec2ForCTC", "pretraining": "Wav2Vec2ForPreTraining", "backbone": "Wav2Vec2Model"},
    "conformer": {"ctc": "Wav2Vec2ConformerForCTC", "pretraining": "Wav2Vec2ConformerForPreTraining",
                  "backbone": "Wav2Vec2ConformerModel"},
    "hubert": {"ctc": "HubertForCTC", "backbone": "HubertModel"},
    "w2v_bert": {"ctc": "Wav2Vec2BertForCTC", "backbone": "Wav2Vec2BertModel"},
}
_HF_CONFIG_NAMES = {"wav2vec2": "Wav2Vec2Config", "conformer": "Wav2Vec2ConformerConfig", "hubert": "HubertConfig",
                    "w2v_bert": "Wav2Vec2BertConfig"}
#: HF's backbone prefix in each family's CTC model.
_HF_CTC_PREFIXES = {"wav2vec2": "wav2vec2.", "conformer": HF_CONFORMER_PREFIX, "hubert": HF_HUBERT_PREFIX}
#: The pretraining heads of our Wav2Vec2Model and HubertModel: not part of HF's bare ``...Model``.
_PRETRAINING_HEADS = ("quantizer.", "project_q.", "final_proj.", "target_glu.", "label_embs")
_EXPORTABLE_KINDS = ("wav2vec2", "wav2vec_ctc", "hubert", "hubert_ctc", "w2v_bert", "w2v_bert_ctc")


def _hf_classes(family: str, head: str):
    """(config class, model class) of transformers for ``family`` and ``head`` ('ctc', 'pretraining', 'backbone')."""
    import transformers

    return getattr(transformers, _HF_CONFIG_NAMES[family]), getattr(transformers, _HF_CLASS_NAMES[family][head])


def _hf_config_kwargs(family: str, cfg: Any) -> Dict[str, Any]:
    """The HF config's keyword arguments for our backbone config ``cfg``."""
    maps = {"wav2vec2": hf_config_kwargs, "conformer": hf_conformer_config_kwargs, "hubert": hf_hubert_config_kwargs,
            "w2v_bert": hf_w2v_bert_config_kwargs}
    return maps[family](cfg)


def export_checkpoint_to_hf(checkpoint_path: str, out_dir: str, dictionary_path: Optional[str] = None,
                            trust_checkpoint: bool = False, langs: Optional[Sequence[str]] = None) -> str:
    """Write an HF folder for a fairseq/fairseq_lite ``wav2vec2``, ``wav2vec_ctc``, ``hubert`` or ``hubert_ctc``
    checkpoint; returns the HF class.

    CTC models become ``Wav2Vec2ForCTC`` / ``HubertForCTC`` with vocab.json, the tokenizer and the feature
    extractor, so ``pipeline("automatic-speech-recognition", model=out_dir)`` transcribes with it; ``wav2vec2``
    becomes ``Wav2Vec2ForPreTraining``, or ``Wav2Vec2Model`` when it was pretrained on continuous targets
    (``quantize_targets=false``: HF's pretraining head always quantizes, so ``final_proj``/``project_q`` are left
    out); ``hubert`` becomes ``HubertModel`` (HF has no HuBERT pretraining head: ``final_proj`` and
    ``label_embs_concat`` are left out). Conformers get the ``Wav2Vec2Conformer*`` twins; ``w2v_bert`` /
    ``w2v_bert_ctc`` become ``Wav2Vec2BertModel`` (without pretraining heads) / ``Wav2Vec2BertForCTC``. ``dictionary_path``
    (a dict.ltr.txt) is needed only when a CTC checkpoint stores no dictionary. A CTC model with adapters also gets
    ``adapter.<lang>.safetensors`` per language, ``langs`` naming adapter rows 0, 1 … (default: the checkpoint's
    ``task.multi_corpus_keys``); its main weights hold the first language's adapters."""
    from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
    from fairseq_lite.models import MODEL_REGISTRY
    from fairseq_lite.models.wav2vec.wav2vec2_asr import checkpoint_kind, pretraining_config_from

    state = load_checkpoint_to_cpu(checkpoint_path, trust_checkpoint=trust_checkpoint)
    kind = checkpoint_kind(state)
    if kind not in _EXPORTABLE_KINDS:
        raise ConfigError(f"{checkpoint_path} holds a '{kind}' model; only {', '.join(_EXPORTABLE_KINDS)} convert "
                          "to HF")
    model_cfg = state["cfg"]["model"]
    ctc = kind.endswith("_ctc")
    w2v_model_cfg = pretraining_config_from(model_cfg["w2v_args"])["model"] if ctc else model_cfg
    cfg = MODEL_REGISTRY.build_config(w2v_model_cfg, from_checkpoint=True)
    family = _export_family(kind, cfg)
    kwargs = dict(_hf_config_kwargs(family, cfg), **hf_adapter_kwargs(cfg))
    model_weights, adapters = split_adapters(state["model"])
    if (adapters or langs) and not ctc:
        raise ConfigError(f"{checkpoint_path}: only fine-tuned CTC models with adapters (layer_type=trf_adp) convert "
                          "with their languages (HF's load_adapter also loads the output layer)")
    if ctc:
        head = "ctc"
        dictionary = _ctc_dictionary(state, checkpoint_path, dictionary_path)
        weights = _ctc_weights_to_hf(model_weights, model_cfg, len(dictionary), family)
        adapter_files = _adapter_files(adapters, weights, _export_languages(state, cfg, langs, checkpoint_path))
        weights.update(next(iter(adapter_files.values()), {}))
        kwargs.update(vocab_size=len(dictionary), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      ctc_loss_reduction="sum", ctc_zero_infinity=True,
                      final_dropout=model_cfg.get("final_dropout", 0.0))
        if family == "w2v_bert":
            kwargs.update(hf_w2v_bert_adapter_kwargs(model_cfg))
    else:
        head, weights = _pretraining_weights_to_hf(state["model"], cfg, family, checkpoint_path)
    config_cls, model_cls = _hf_classes(family, head)
    hf_model = model_cls(config_cls(**kwargs))
    _load_hf_strict(hf_model, _without_absent_mask_emb(hf_model, weights))
    hf_model.save_pretrained(out_dir)
    task_cfg = state["cfg"].get("task") or {}
    if ctc:
        _write_adapter_files(out_dir, adapter_files)
        save_hf_processor(out_dir, dictionary, task_cfg, family)
    elif family in ("hubert", "w2v_bert"):  # their HF folders carry the feature extractor, as HF's do
        hf_feature_extractor(task_cfg, family).save_pretrained(out_dir)
    return model_cls.__name__


def _export_family(kind: str, cfg: Any) -> str:
    """The HF family (wav2vec2, conformer, hubert, w2v_bert) of a checkpoint of ``kind`` with backbone ``cfg``."""
    for family in ("hubert", "w2v_bert"):
        if kind.startswith(family):
            return family
    return "conformer" if is_conformer_config(cfg) else "wav2vec2"


def _without_absent_mask_emb(hf_model: Any, weights: StateDict) -> StateDict:
    """HF's w2v-BERT builds ``masked_spec_embed`` only when its config masks (mask_time_prob or mask_feature_prob
    > 0): without one there, our ``mask_emb`` is left out."""
    names = set(hf_model.state_dict())
    return {k: v for k, v in weights.items() if not k.endswith("masked_spec_embed") or k in names}


def _export_languages(state: Dict[str, Any], cfg: Any, langs: Optional[Sequence[str]], checkpoint_path: str
                      ) -> List[str]:
    """The language of each adapter row: ``langs``, else the checkpoint's ``task.multi_corpus_keys``; none
    without adapters."""
    if str(getattr(cfg, "layer_type", "transformer")) != "trf_adp":
        if langs:
            raise ConfigError(f"--langs is for models with language adapters; {checkpoint_path} has none")
        return []
    if not langs:
        keys = (state["cfg"].get("task") or {}).get("multi_corpus_keys")
        langs = parse_corpus_keys(keys) if keys else []
    if len(langs) != cfg.adp_num or len(set(langs)) != len(langs):
        found = ",".join(langs) or "none in task.multi_corpus_keys"
        raise ConfigError(f"{checkpoint_path} has adp_num={cfg.adp_num} language adapters: name them, in adapter "
                          f"order, with --langs eng,fra,... (got {found})")
    return list(langs)


def _adapter_files(adapters: StateDict, weights: StateDict, langs: List[str]) -> Dict[str, StateDict]:
    """``adapter.<lang>.safetensors``'s tensors for each language: its row of every layer's adapter, HF-named,
    and the output layer (``lm_head``), as HF's ``_get_adapters``."""
    backbone = {k[len(CTC_BACKBONE_PREFIX):]: v for k, v in adapters.items()}
    head = {k: v for k, v in weights.items() if k.startswith(HF_LM_HEAD_PREFIX)}
    return {lang: {**adapter_row_to_hf(backbone, row), **head} for row, lang in enumerate(langs)}


def _write_adapter_files(out_dir: str, files: Dict[str, StateDict]) -> None:
    """Each language's ``adapter.<lang>.safetensors`` in ``out_dir``, written to a temporary file and renamed."""
    import os

    from safetensors.torch import save

    from fairseq_lite.file_io import atomic_write_bytes

    for lang, tensors in files.items():
        atomic_write_bytes(save({k: v.contiguous() for k, v in tensors.items()}),
                           os.path.join(out_dir, HF_ADAPTER_FILE.format(lang)))


def _pretraining_weights_to_hf(state_dict: StateDict, cfg: Any, family: str, checkpoint_path: str
                               ) -> Tuple[str, StateDict]:
    """(HF head, HF weights) of a pretraining checkpoint: ``...ForPreTraining`` for quantized wav2vec 2.0, else
    the bare backbone without the pretraining heads (one warning line)."""
    if family == "w2v_bert":
        return "backbone", _w2v_bert_backbone_to_hf(state_dict, checkpoint_path)
    if family != "hubert" and cfg.quantize_targets:
        to_hf = wav2vec2_conformer_to_hf_state_dict if family == "conformer" else wav2vec2_to_hf_state_dict
        return "pretraining", to_hf(state_dict)
    if family == "hubert":
        logger.warning("%s: Hugging Face has no HuBERT pretraining head, writing the HubertModel backbone without "
                       "final_proj and label_embs_concat", checkpoint_path)
    else:
        logger.warning("%s was pretrained with model.quantize_targets=false, which HF's ...ForPreTraining models "
                       "cannot compute: writing the network without its pretraining heads (final_proj, project_q)",
                       checkpoint_path)
    backbone = {k: v for k, v in state_dict.items() if not k.startswith(_PRETRAINING_HEADS)}
    to_hf = wav2vec2_conformer_to_hf_state_dict if family == "conformer" else wav2vec2_to_hf_state_dict
    return "backbone", to_hf(backbone, hf_prefix="")


def _w2v_bert_backbone_to_hf(state_dict: StateDict, checkpoint_path: str) -> StateDict:
    """A ``w2v_bert`` state dict as HF ``Wav2Vec2BertModel`` weights: HF has no w2v-BERT pretraining head, so the
    pretraining modules (quantizer, projections) are left out with one warning line."""
    backbone = {k: v for k, v in state_dict.items() if k.startswith(W2V_BERT_BACKBONE_PREFIXES)}
    if len(backbone) < len(state_dict):
        logger.warning("%s: Hugging Face's Wav2Vec2BertModel has no pretraining head: writing the encoder without "
                       "the %d pretraining tensors", checkpoint_path, len(state_dict) - len(backbone))
    return w2v_bert_to_hf_state_dict(backbone)


def _ctc_dictionary(state: Dict[str, Any], checkpoint_path: str, dictionary_path: Optional[str]) -> Any:
    """The target dictionary: ``dictionary_path`` when given, else the one the checkpoint stores."""
    from fairseq_lite.data.dictionary import Dictionary

    if dictionary_path is not None:
        return Dictionary.load(dictionary_path)
    dictionary = (state.get("task_state") or {}).get("target_dictionary")
    if dictionary is None:
        raise ConfigError(f"{checkpoint_path} stores no target dictionary: pass the dict.ltr.txt it was trained with")
    return dictionary


def _ctc_weights_to_hf(state_dict: StateDict, model_cfg: Dict[str, Any], vocab_size: int, family: str) -> StateDict:
    """A ``wav2vec_ctc`` / ``hubert_ctc`` state dict with HF names; ``blank_weight`` (blank_mode add) folded into the
    blank's bias. The frozen, unused ``label_embs_concat`` fairseq keeps in fine-tuned HuBERT files is left out."""
    unused = CTC_BACKBONE_PREFIX + "label_embs"
    kept = {k: v for k, v in state_dict.items() if not k.startswith(unused)}
    if family == "w2v_bert":
        weights = w2v_bert_ctc_to_hf_state_dict(kept)
    else:
        weights = ctc_to_hf_state_dict(kept, family == "conformer", _HF_CTC_PREFIXES[family])
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


def save_hf_processor(out_dir: str, dictionary: Any, task_cfg: Dict[str, Any], family: str = "wav2vec2") -> None:
    """What ``pipeline("automatic-speech-recognition")`` loads besides the model: vocab.json (HF's names for
    fairseq's specials, ``<pad>`` = index 0 = the CTC blank), a ``Wav2Vec2CTCTokenizer`` with the word delimiter
    ``|``, and a ``Wav2Vec2FeatureExtractor`` with ``do_normalize`` = ``task.normalize`` and the task's sample rate.

    ``return_attention_mask`` is true whatever the CNN's norm: fairseq fine-tuning pads its batches and masks the
    padding in the encoder (HF's converter turns the mask off for group-norm models, so their batched output
    would differ from fairseq's). w2v-BERT gets HF's ``Wav2Vec2BertProcessor`` with its fbank extractor."""
    import json
    import os

    import transformers

    os.makedirs(out_dir, exist_ok=True)
    vocab_file = os.path.join(out_dir, "vocab.json")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(hf_vocab(dictionary), f, ensure_ascii=False)
    tokenizer = transformers.Wav2Vec2CTCTokenizer(vocab_file, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                                  eos_token="</s>", word_delimiter_token="|")
    extractor = hf_feature_extractor(task_cfg, family)
    processor = transformers.Wav2Vec2BertProcessor if family == "w2v_bert" else transformers.Wav2Vec2Processor
    processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    extractor.save_pretrained(out_dir)  # preprocessor_config.json: transformers 5 keeps it inside processor_config.json


def hf_feature_extractor(task_cfg: Dict[str, Any], family: str = "wav2vec2") -> Any:
    """A ``Wav2Vec2FeatureExtractor`` with ``do_normalize`` = ``task.normalize`` and the task's sample rate; for
    w2v-BERT the ``SeamlessM4TFeatureExtractor`` our front end computes (HF's defaults, ``padding_value=1``)."""
    import transformers

    if family == "w2v_bert":
        return transformers.SeamlessM4TFeatureExtractor(sampling_rate=int(task_cfg.get("sample_rate", 16000)),
                                                        padding_value=1.0, return_attention_mask=True)

    return transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=int(task_cfg.get("sample_rate", 16000)), padding_value=0.0,
        do_normalize=bool(task_cfg.get("normalize", False)), return_attention_mask=True,
    )


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


_FAMILIES = {"wav2vec2": "wav2vec2", "wav2vec2-conformer": "conformer", "hubert": "hubert",
             "wav2vec2-bert": "w2v_bert"}
#: The bare backbone class each family without an HF pretraining head converts from.
_HF_BACKBONES = {"hubert": "HubertModel", "w2v_bert": "Wav2Vec2BertModel"}


def _convertible_kind(hf_dir: str, config: Any) -> Tuple[str, str]:
    """(family, head) of an HF folder's config: wav2vec2(-conformer) ForCTC/ForPreTraining, HubertForCTC /
    Wav2Vec2BertForCTC or the bare HubertModel / Wav2Vec2BertModel (HF has no pretraining head for these);
    anything else is a ConfigError."""
    if config.model_type not in _FAMILIES:
        raise ConfigError(f"{hf_dir} holds a '{config.model_type}' model; expected wav2vec2, wav2vec2-conformer, "
                          "hubert or wav2vec2-bert")
    family, architectures = _FAMILIES[config.model_type], config.architectures or []
    if any(a.endswith("ForCTC") for a in architectures):
        return family, "ctc"
    if _HF_BACKBONES.get(family) in architectures:
        return family, "backbone"
    if family not in _HF_BACKBONES and any(a.endswith("ForPreTraining") for a in architectures):
        return family, "pretraining"
    raise ConfigError(
        f"{hf_dir} holds a {'/'.join(architectures) or 'model with no architectures in config.json'}: only "
        "...ForCTC, ...ForPreTraining, HubertModel and Wav2Vec2BertModel folders convert (a bare Wav2Vec2Model has no "
        "pretraining heads, and HF would fill them with random weights)")


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


def import_checkpoint_from_hf(hf_dir: str, out_path: str, langs: Optional[Sequence[str]] = None) -> str:
    """Write a fairseq-layout checkpoint (``wav2vec2``, ``hubert``, ``wav2vec_ctc`` or ``hubert_ctc``, with the
    dictionary in ``task_state``) for a local HF folder of ``Wav2Vec2ForPreTraining``/``ForCTC``, their conformer
    twins, ``HubertModel`` or ``HubertForCTC``; ``Wav2Vec2BertModel`` / ``Wav2Vec2BertForCTC`` give ``w2v_bert`` /
    ``w2v_bert_ctc`` (``task.normalize=false``). Returns our model name. A ``Wav2Vec2ForCTC`` with adapters becomes
    a ``trf_adp`` model whose adapter rows are the ``adapter.<lang>.safetensors`` of ``langs`` (default: every
    such file in the folder, sorted), stored as ``task.multi_corpus_keys``."""
    import os

    import transformers

    from fairseq_lite.file_io import atomic_save
    from fairseq_lite.interop.fairseq_schema import make_fairseq_readable

    config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    family, head = _convertible_kind(hf_dir, config)
    hf_state = _hf_classes(family, head)[1].from_pretrained(hf_dir, local_files_only=True).state_dict()
    config_from_hf = {"wav2vec2": wav2vec2_config_from_hf, "conformer": wav2vec2_conformer_config_from_hf,
                      "hubert": hubert_config_from_hf, "w2v_bert": w2v_bert_config_from_hf}[family]
    pretrain_model, data = config_from_hf(config), os.path.abspath(hf_dir)
    pretrain_task = _pretraining_task(family, data, _hf_normalize(hf_dir, config, family))
    hf_state, adapters, langs = _import_adapters(hf_dir, hf_state, langs)
    if adapters and head != "ctc":
        raise ConfigError(f"{hf_dir}: only Wav2Vec2ForCTC folders with adapters convert (HF keeps the languages' "
                          "adapters with their output layers)")
    if head == "ctc":
        cfg, weights, task_state = _ctc_checkpoint_parts(hf_dir, config, hf_state, family, pretrain_task,
                                                         pretrain_model, langs)
        weights.update({CTC_BACKBONE_PREFIX + k: v for k, v in adapters.items()})
        name, criterion_name = cfg["model"]["_name"], "CtcCriterion"
    elif family == "hubert":
        logger.warning("%s: Hugging Face's HubertModel has no pretraining head (final_proj, label_embs_concat): the "
                       "hubert checkpoint is a backbone for fine-tuning (model.w2v_path) and feature extraction",
                       hf_dir)
        # no label sets (task.labels=[]): loading needs no dict.km.txt and builds the model without label embeddings
        cfg = _finalize({"task": {**pretrain_task, "labels": []}, "model": pretrain_model,
                         "criterion": {"_name": "hubert"}})
        weights, task_state = wav2vec2_from_hf_state_dict(hf_state, hf_prefix=""), {}
        name, criterion_name = "hubert", "HubertCriterion"
    elif family == "w2v_bert":
        if config.add_adapter:
            raise ConfigError(f"{hf_dir}: a Wav2Vec2BertModel with add_adapter=true has no w2v_bert equivalent (the "
                              "adapter belongs to w2v_bert_ctc): convert a Wav2Vec2BertForCTC folder")
        logger.warning("%s: Hugging Face's Wav2Vec2BertModel has no pretraining head (the quantizer was dropped by "
                       "HF's converter): continued pretraining starts with a fresh one", hf_dir)
        cfg = _finalize({"task": pretrain_task, "model": pretrain_model})
        weights = with_mask_emb(w2v_bert_from_hf_state_dict(hf_state), pretrain_model["encoder_embed_dim"])
        task_state, name, criterion_name = {}, "w2v_bert", "W2vBertCriterion"
    else:
        cfg = _finalize({"task": pretrain_task, "model": pretrain_model,
                         "criterion": {"_name": "wav2vec", "infonce": True}})
        weights = (wav2vec2_conformer_from_hf_state_dict if family == "conformer" else wav2vec2_from_hf_state_dict)(
            hf_state)
        task_state, name, criterion_name = {}, "wav2vec2", "Wav2vecCriterion"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_save(make_fairseq_readable(_checkpoint_state(cfg, weights, task_state, criterion_name)),
                out_path)
    return name


def _finalize(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The resolved config dict to store. A HuBERT task is stored as given (the fields of fairseq's yamls) and only
    the model and criterion are resolved, so the file is written whether or not ``hubert_pretraining`` is loaded."""
    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.dataclass.utils import config_to_dict
    from fairseq_lite.models import MODEL_REGISTRY

    task = cfg["task"]
    if task["_name"] != "hubert_pretraining":
        return config_to_dict(finalize_config(cfg, from_checkpoint=True))
    model = dict(cfg["model"])
    if model["_name"] == "hubert_ctc":
        model.update(normalize=task["normalize"], data=task["data"])
    return {**config_to_dict(finalize_config({"criterion": cfg.get("criterion")}, from_checkpoint=True)),
            "task": dict(task), "model": config_to_dict(MODEL_REGISTRY.build_config(model, from_checkpoint=True))}


def _hf_normalize(hf_dir: str, config: Any, family: str) -> bool:
    """``task.normalize``: the feature extractor's ``do_normalize`` (saved with the processor), else what HF's
    converters write (true for layer-norm CNNs, with a warning)."""
    import transformers

    if family == "w2v_bert":  # the fbank front end takes the waveform as loaded and normalises its features
        return False
    try:
        extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(hf_dir, local_files_only=True)
        return bool(extractor.do_normalize)
    except OSError:
        normalize = family != "conformer" and config.feat_extract_norm == "layer"
        logger.warning("%s has no feature extractor config: assuming task.normalize=%s", hf_dir, normalize)
        return normalize


def _pretraining_task(family: str, data: str, normalize: bool) -> Dict[str, Any]:
    """The pretraining task config stored with an imported model (HuBERT's label rate is not in HF's config)."""
    if family == "hubert":
        return {"_name": "hubert_pretraining", "data": data, "label_dir": data, "labels": ["km"],
                "label_rate": HUBERT_DEFAULT_LABEL_RATE, "normalize": normalize}
    return {"_name": "audio_pretraining", "data": data, "normalize": normalize}


def _import_adapters(hf_dir: str, hf_state: StateDict, langs: Optional[Sequence[str]]
                     ) -> Tuple[StateDict, StateDict, List[str]]:
    """(the HF state without adapters, with the languages' shared ``lm_head``; our stacked adapter tensors; the
    languages) of an HF model; adapters and languages are empty when it has none (e.g. post-LN, which HF builds
    without adapters whatever ``adapter_attn_dim`` says)."""
    import glob
    import os

    from safetensors.torch import load_file

    rest, own = split_adapters(hf_state)
    if not own:
        if langs:
            raise ConfigError(f"--langs is for models with language adapters; {hf_dir} has none")
        return hf_state, {}, []
    if not langs:
        pattern = HF_ADAPTER_FILE.format("*")
        langs = sorted(os.path.basename(p)[len("adapter."):-len(".safetensors")]
                       for p in glob.glob(os.path.join(glob.escape(hf_dir), pattern)))
    if not langs:
        raise ConfigError(f"{hf_dir} has adapter layers but no {HF_ADAPTER_FILE.format('<lang>')} files: save each "
                          "language's adapters there (model._get_adapters()) or pass --langs")
    expected = set(own) | {k for k in rest if k.startswith(HF_LM_HEAD_PREFIX)}
    rows = []
    for lang in langs:
        path = os.path.join(hf_dir, HF_ADAPTER_FILE.format(lang))
        if not os.path.exists(path):
            raise ConfigError(f"{path} does not exist: --langs names the adapter.<lang>.safetensors files to import")
        row = load_file(path)
        if set(row) != expected:
            raise ConfigError(f"{path} does not hold adapters of this model (HF's _get_adapters layout): missing "
                              f"{sorted(expected - set(row))[:3]}, unexpected {sorted(set(row) - expected)[:3]}")
        rows.append(row)
    return {**rest, **_shared_head(rows, langs, hf_dir)}, adapters_from_hf(rows), list(langs)


def _shared_head(rows: List[StateDict], langs: Sequence[str], hf_dir: str) -> StateDict:
    """The ``lm_head`` every language's adapter file holds; per-language output layers (MMS's per-language
    vocabularies) do not fit one wav2vec_ctc output layer: a ConfigError says to convert one language at a time."""
    head = {k: v for k, v in rows[0].items() if k.startswith(HF_LM_HEAD_PREFIX)}
    for lang, row in zip(langs[1:], rows[1:]):
        if any(not torch.equal(v, row[k]) for k, v in head.items()):
            raise ConfigError(f"{hf_dir}: adapter.{langs[0]} and adapter.{lang} have different output layers "
                              "(one vocabulary per language); fairseq_lite's wav2vec_ctc has one: convert one "
                              f"language at a time (--langs {lang})")
    return head


#: Our CTC model for each HF family (wav2vec_ctc for the others).
_CTC_MODEL_NAMES = {"hubert": "hubert_ctc", "w2v_bert": "w2v_bert_ctc"}


def _ctc_checkpoint_parts(hf_dir: str, config: Any, hf_state: StateDict, family: str, pretrain_task: Dict[str, Any],
                          pretrain_model: Dict[str, Any], langs: Sequence[str] = ()
                          ) -> Tuple[Any, StateDict, Dict[str, Any]]:
    """(config, weights, task_state) of the ``wav2vec_ctc`` / ``hubert_ctc`` checkpoint for an HF CTC folder; with
    ``langs``, a ``trf_adp`` model with one adapter per language, ``task.multi_corpus_keys`` naming them."""
    import json
    import os

    with open(os.path.join(hf_dir, "vocab.json"), encoding="utf-8") as f:
        dictionary = dictionary_from_hf_vocab(json.load(f))
    adapter_cfg = dict(layer_type="trf_adp", adp_num=len(langs), adp_dim=config.adapter_attn_dim, adp_act_fn="relu",
                       adp_trf_idx="all") if langs else {}
    if family == "hubert":  # HF keeps no label embeddings: no label sets, so loading needs no dict.km.txt
        pretrain_task = {**pretrain_task, "labels": []}
    pretraining = _finalize({"task": pretrain_task, "model": {**pretrain_model, **adapter_cfg}})
    pretraining["criterion"] = pretraining["lr_scheduler"] = None
    data, normalize = pretrain_task["data"], pretrain_task["normalize"]
    if family == "hubert":
        task = {"_name": "hubert_pretraining", "data": data, "label_dir": data, "labels": ["ltr"],
                "fine_tuning": True, "single_target": True, "normalize": normalize}
    else:
        task = {"_name": "audio_finetuning", "data": data, "labels": "ltr", "normalize": normalize,
                **({"multi_corpus_keys": ",".join(langs)} if langs else {})}
    if family == "w2v_bert":  # HF's add_adapter: w2v_bert_ctc's adapter between the encoder and the output layer
        adapter_cfg = w2v_bert_adapter_config_from_hf(config)
    cfg = _finalize({
        "task": task,
        "model": {"_name": _CTC_MODEL_NAMES.get(family, "wav2vec_ctc"), "w2v_path": data,
                  "w2v_args": pretraining, "final_dropout": getattr(config, "final_dropout", 0.0), **adapter_cfg},
        "criterion": {"_name": "ctc", "zero_infinity": True},
    })
    if family == "w2v_bert":
        weights = with_mask_emb(w2v_bert_ctc_from_hf_state_dict(hf_state), pretrain_model["encoder_embed_dim"],
                                CTC_BACKBONE_PREFIX)
    else:
        weights = ctc_from_hf_state_dict(hf_state, family == "conformer", _HF_CTC_PREFIXES[family])
    if family == "hubert":  # the empty label embeddings fairseq's HubertCtc reads strictly (zero label sets)
        backbone = pretraining["model"]
        final_dim = backbone["final_dim"] if backbone["final_dim"] > 0 else backbone["encoder_embed_dim"]
        weights[CTC_BACKBONE_PREFIX + "label_embs_concat"] = torch.zeros(0, final_dim)
    return cfg, weights, {"target_dictionary": dictionary}
