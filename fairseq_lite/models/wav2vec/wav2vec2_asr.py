"""CTC fine-tuning of wav2vec 2.0 (fairseq's ``models/wav2vec/wav2vec2_asr.py``): the ``wav2vec_ctc`` model.

``Wav2VecEncoder`` wraps a pretrained ``Wav2Vec2Model`` (read from ``w2v_path`` with the fine-tuning
overrides: dropouts, masking, layerdrop, feature_grad_mult) and adds ``proj``, a linear layer onto the
target dictionary. The pretraining config is stored under ``w2v_args``, so a fine-tuned checkpoint
rebuilds its network without ``w2v_path``. State-dict keys are fairseq's: ``w2v_encoder.w2v_model.*``
and ``w2v_encoder.proj.{weight,bias}``.

Deliberate differences from fairseq, each a fix for a reported problem:

* the network shape (``layer_type``: transformer or conformer) always comes from the pretraining config,
  so a conformer model fine-tunes without repeating ``model.layer_type=conformer`` (fairseq copies the
  fine-tuning default ``transformer`` over it);
* loading weights whose output layer has another vocabulary size re-initialises ``proj`` with a warning
  (fairseq stops with a size mismatch, fairseq#4284);
* a fine-tuned checkpoint given as ``w2v_path``, or pretraining weights loaded into a CTC model, raise one
  ``CheckpointError`` naming what was found (fairseq#4267);
* a ``normalize`` mismatch is a ``ConfigError`` naming the value to use, not an assertion;
* adapter fine-tuning (``model.layer_type=trf_adp`` with ``model.adp_*`` over a pretrained model without
  adapters, as fairseq HEAD's MMS recipe) initialises the missing adapter weights with one warning (fairseq
  loads strictly and fails); ``model.freeze_regex=ADAPTERS_ONLY_FREEZE_REGEX`` then trains only the adapters and
  ``proj``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from enum import Enum
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from fairseq_lite.dataclass import ChoiceEnum, FairseqDataclass, help_text, II
from fairseq_lite.errors import CheckpointError, ConfigError
from fairseq_lite.models import BaseFairseqModel, build_model, register_model
from fairseq_lite.models.wav2vec.wav2vec2 import LAYER_TYPE_CHOICES, MASKING_DISTRIBUTION_CHOICES
from fairseq_lite.modules.masking import MASKER_SETTINGS
from fairseq_lite.modules.static_shapes import any_padding

logger = logging.getLogger(__name__)

BLANK_MODE_CHOICES = ChoiceEnum(["add", "set"])



@dataclass
class Wav2Vec2AsrConfig(FairseqDataclass):
    """fairseq's ``Wav2Vec2AsrConfig``: the fine-tuning options shared by CTC (and fairseq's seq2seq) models."""

    w2v_path: str = field(default="???", metadata=help_text("path to wav2vec 2.0 model"))
    no_pretrained_weights: bool = field(default=False, metadata=help_text("if true, does not load pretrained weights"))
    dropout_input: float = field(default=0.0, metadata=help_text("dropout to apply to the input (after feat extr)"))
    final_dropout: float = field(default=0.0, metadata=help_text(
        "dropout after transformer and before final projection"))
    dropout: float = field(default=0.0, metadata=help_text("dropout probability inside wav2vec 2.0 model"))
    attention_dropout: float = field(default=0.0, metadata=help_text(
        "dropout probability for attention weights inside wav2vec 2.0 model"))
    activation_dropout: float = field(default=0.0, metadata=help_text(
        "dropout probability after activation in FFN inside wav2vec 2.0 model"))
    conv_feature_layers: Optional[str] = field(
        default="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
        metadata=help_text("accepted for fairseq configs; the network is read from the pretraining config"))
    encoder_embed_dim: Optional[int] = field(default=768, metadata=help_text(
        "accepted for fairseq configs; the network is read from the pretraining config"))
    apply_mask: bool = field(default=False, metadata=help_text("apply masking during fine-tuning"))
    mask_length: int = field(default=10, metadata=help_text("repeat the mask indices multiple times"))
    mask_prob: float = field(default=0.5, metadata=help_text(
        "probability of replacing a token with mask (normalized by length)"))
    mask_selection: MASKING_DISTRIBUTION_CHOICES = field(default="static", metadata=help_text("how to choose masks"))
    mask_other: float = field(default=0, metadata=help_text(
        "secondary mask argument (used for more complex distributions), see help in compute_mask_indices"))
    no_mask_overlap: bool = field(default=False, metadata=help_text("whether to allow masks to overlap"))
    mask_min_space: Optional[int] = field(default=1, metadata=help_text(
        "min space between spans (if no overlap is enabled)"))
    require_same_masks: bool = field(default=True, metadata=help_text(
        "whether to number of masked timesteps must be the same across all examples in a batch"))
    mask_dropout: float = field(default=0.0, metadata=help_text("percent of masks to unmask for each sample"))
    mask_channel_length: int = field(default=10, metadata=help_text("length of the mask for features (channels)"))
    mask_channel_prob: float = field(default=0.0, metadata=help_text("probability of replacing a feature with 0"))
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = field(default="static", metadata=help_text(
        "how to choose mask length for channel masking"))
    mask_channel_other: float = field(default=0, metadata=help_text(
        "secondary mask argument (used for more complex distributions), see help in compute_mask_indicesh"))
    no_mask_channel_overlap: bool = field(default=False, metadata=help_text("whether to allow channel masks to overlap"))
    freeze_finetune_updates: int = field(default=0, metadata=help_text("dont finetune wav2vec for this many updates"))
    feature_grad_mult: float = field(default=0.0, metadata=help_text("reset feature grad mult in wav2vec 2.0 to this"))
    layerdrop: float = field(default=0.0, metadata=help_text("probability of dropping a layer in wav2vec 2.0"))
    drop_path: float = field(default=0.0, metadata=help_text("data2vec option; must be 0"))
    mask_channel_min_space: Optional[int] = field(default=1, metadata=help_text(
        "min space between spans (if no overlap is enabled)"))
    mask_channel_before: bool = False
    normalize: bool = II("task.normalize")
    update_alibi: bool = field(default=True, metadata=help_text("data2vec option; no effect"))
    data: str = II("task.data")
    w2v_args: Any = field(default=None, metadata=help_text(
        "the pretraining config (filled from w2v_path; stored in fine-tuned checkpoints)"))
    offload_activations: bool = field(default=False, metadata=help_text("offload_activations (FSDP); no effect"))
    min_params_to_wrap: int = field(default=int(1e8), metadata=help_text("FSDP option; no effect"))
    checkpoint_activations: bool = field(default=False, metadata=help_text(
        "recompute activations and save memory for extra compute"))
    ddp_backend: str = II("distributed_training.ddp_backend")
    zero_mask: bool = field(default=False, metadata=help_text("data2vec option; must be false"))
    load_ema: bool = field(default=False, metadata=help_text("data2vec option; must be false"))
    layer_decay: float = field(default=1, metadata=help_text("data2vec option; must be 1"))
    layer_type: LAYER_TYPE_CHOICES = field(default="transformer", metadata=help_text(
        "layer type of the pretrained encoder; read from the pretraining config when left at transformer; "
        "trf_adp adds language adapters (model.adp_*) to a transformer"))
    adp_num: int = field(default=-1, metadata=help_text(
        "with layer_type=trf_adp: number of language adapters (one per task.multi_corpus_keys entry)"))
    adp_dim: int = field(default=64, metadata=help_text("with layer_type=trf_adp: adapter bottleneck dimension"))
    adp_act_fn: str = field(default="relu", metadata=help_text("with layer_type=trf_adp: relu, gelu or selu"))
    adp_trf_idx: str = field(default="all", metadata=help_text(
        "with layer_type=trf_adp: the layers with adapters, all or a Python range start:stop"))
    freeze_regex: Optional[str] = field(default=None, metadata=help_text(
        "freeze the parameters whose full name matches this regular expression"))


@dataclass
class Wav2Vec2CtcConfig(Wav2Vec2AsrConfig):
    """fairseq's ``Wav2Vec2CtcConfig``: the blank logit's offset (``add``) or value (``set``)."""

    blank_weight: float = 0
    blank_mode: BLANK_MODE_CHOICES = "add"


#: Fine-tuning option → the ``Wav2Vec2Config`` field of the pretrained model it overrides: the masker's settings
#: (same names on both sides), dropouts, layerdrop, feature_grad_mult and activation checkpointing.
W2V_OVERRIDES = {
    **{name: name for name in MASKER_SETTINGS},
    "dropout": "dropout",
    "activation_dropout": "activation_dropout",
    "dropout_input": "dropout_input",
    "attention_dropout": "attention_dropout",
    "layerdrop": "encoder_layerdrop",
    "feature_grad_mult": "feature_grad_mult",
    "checkpoint_activations": "checkpoint_activations",
}

#: The fine-tuning options that describe the adapters (fairseq HEAD copies them over the pretraining config).
ADAPTER_FIELDS = ("adp_num", "adp_dim", "adp_act_fn", "adp_trf_idx")

#: ``model.freeze_regex`` that freezes the whole pretrained network except its adapters, so that adapter
#: fine-tuning trains the adapters and ``w2v_encoder.proj`` only. It means the same under fairseq's
#: ``re.fullmatch`` on names relative to the encoder and under our search on the model's names.
ADAPTERS_ONLY_FREEZE_REGEX = r"w2v_model\.(?!encoder\.layers\.\d+\.adapter_layer\.).*"

#: Pretraining-only weights that fine-tuning drops before loading (EMA teachers, data2vec heads).
_PRETRAINING_ONLY_PREFIXES = ("_ema", "target_proj", "decoder")


#: The fine-tuning model and task for each kind of pretraining checkpoint, named when the wrong one is given.
FINE_TUNING_RECIPES = {
    "wav2vec2": "model._name=wav2vec_ctc with task._name=audio_finetuning (config/finetuning/base_10h.yaml)",
    "hubert": "model._name=hubert_ctc with task._name=hubert_pretraining task.fine_tuning=true "
              "(examples/hubert/config/finetune/base_10h.yaml)",
    "w2v_bert": "model._name=w2v_bert_ctc with task._name=audio_finetuning task.normalize=false "
                "(config/finetuning/w2v_bert_2_0_ctc.yaml)",
}


def _check_supported(cfg: Any) -> None:
    unsupported = {
        "drop_path": getattr(cfg, "drop_path", 0) != 0,
        "zero_mask": getattr(cfg, "zero_mask", False),
        "load_ema": getattr(cfg, "load_ema", False),
        "layer_decay": getattr(cfg, "layer_decay", 1) != 1,
    }
    for key, is_set in unsupported.items():
        if is_set:
            raise ConfigError(f"model.{key} is a data2vec option that fairseq_lite does not support: "
                              "leave it at its default")


def checkpoint_kind(state: Dict[str, Any]) -> str:
    """What a checkpoint holds, from its config and keys: ``wav2vec_ctc``, ``hubert_ctc``, ``wav2vec2``,
    ``hubert``, or another model name (CTC weights under another name count as ``wav2vec_ctc``)."""
    model_cfg = (state.get("cfg") or {}).get("model") or {}
    name = str(model_cfg.get("_name") or "unknown") if isinstance(model_cfg, dict) else "unknown"
    if any(k.startswith("w2v_encoder.") for k in state.get("model") or {}):
        return name if name in ("hubert_ctc", "w2v_bert_ctc") else "wav2vec_ctc"
    return name


def pretraining_config_from(w2v_args: Any) -> Dict[str, Any]:
    """The stored pretraining config (``model.w2v_args``) as a plain dict; legacy Namespaces are converted on load."""
    if not isinstance(w2v_args, dict):
        raise CheckpointError(f"model.w2v_args holds a {type(w2v_args).__name__}; expected the pretraining config")
    return w2v_args


def load_pretrained(cfg: Any, pretrained_model: str = "wav2vec2"
                    ) -> Tuple[Dict[str, Any], Optional[Dict[str, torch.Tensor]]]:
    """The pretraining config (``w2v_args``) with the fine-tuning overrides applied, and the pretrained weights.

    Reads ``model.w2v_path`` unless the config already holds ``w2v_args`` (a fine-tuned checkpoint being loaded);
    the weights are None then, and with ``no_pretrained_weights``. Checks that the file is a pretraining
    checkpoint of ``pretrained_model`` (``wav2vec2`` or ``hubert``) and that ``normalize`` and ``layer_type``
    agree with it. Only the overrides the fine-tuning config has are applied (HuBERT's has fewer).
    """
    state = None
    if cfg.w2v_args is None:
        state = _read_pretraining_checkpoint(cfg.w2v_path, pretrained_model)
        w2v_args = state["cfg"]
        w2v_args["criterion"] = None
        w2v_args["lr_scheduler"] = None
    else:
        w2v_args = pretraining_config_from(cfg.w2v_args)
    task_cfg = w2v_args.get("task") or {}
    model_cfg = w2v_args.get("model")
    if not isinstance(model_cfg, dict) or model_cfg.get("_name", model_cfg.get("arch")) != pretrained_model:
        found = model_cfg.get("_name") if isinstance(model_cfg, dict) else None
        raise CheckpointError(f"model.w2v_path must be a {pretrained_model} pretraining checkpoint; its model is "
                              f"'{found}'")
    if isinstance(cfg.normalize, bool) and cfg.normalize != bool(task_cfg.get("normalize", False)):
        pretrained = bool(task_cfg.get("normalize", False))
        raise ConfigError(
            f"task.normalize={cfg.normalize} but the pretrained model was trained with normalize={pretrained}; "
            f"fine-tuning works best when data normalization is the same: set task.normalize={pretrained}"
        )
    for ours, theirs in W2V_OVERRIDES.items():
        if hasattr(cfg, ours):
            value = getattr(cfg, ours)
            model_cfg[theirs] = value.value if isinstance(value, Enum) else value
    _apply_layer_type(cfg, model_cfg)
    task_cfg["data"] = cfg.data
    w2v_args["task"] = task_cfg
    weights = None
    if state is not None and not cfg.no_pretrained_weights:
        weights = {k: v for k, v in state["model"].items() if not k.startswith(_PRETRAINING_ONLY_PREFIXES)}
    return w2v_args, weights


def _apply_layer_type(cfg: Any, model_cfg: Dict[str, Any]) -> None:
    """The fine-tuning ``layer_type`` over the pretraining one: ``transformer`` keeps the pretrained type,
    ``trf_adp`` puts adapters (and the ``adp_*`` options) on a transformer, as fairseq HEAD's MMS fine-tuning."""
    pretrained_type = str(model_cfg.get("layer_type", "transformer"))
    wanted = str(getattr(cfg, "layer_type", "transformer"))
    if wanted == "trf_adp" and pretrained_type in ("transformer", "trf_adp"):
        model_cfg["layer_type"] = wanted
        model_cfg.update({name: getattr(cfg, name) for name in ADAPTER_FIELDS})
    elif wanted not in ("transformer", pretrained_type):
        raise ConfigError(f"model.layer_type={wanted} but the pretrained model is a {pretrained_type}: "
                          "remove model.layer_type (it is read from the pretraining config)")


def with_initialised_adapters(module: nn.Module, state_dict: Dict[str, torch.Tensor], source: str
                              ) -> Dict[str, torch.Tensor]:
    """``state_dict`` completed with ``module``'s own (freshly initialised) adapter weights where it has none,
    with one warning saying how many: adapter fine-tuning from a model without adapters (fairseq HEAD loads
    strictly and stops on the missing keys). Adapters of another count or size are a CheckpointError; any other
    missing key is left for the strict load to report."""
    own = {k: v for k, v in module.state_dict().items() if ".adapter_layer." in k}
    for key, value in own.items():
        stored = state_dict.get(key)
        if stored is not None and stored.shape != value.shape:
            raise CheckpointError(f"{source} has adapters {key} of shape {tuple(stored.shape)} but model.adp_num/"
                                  f"adp_dim describe {tuple(value.shape)}: set them to the checkpoint's values")
    missing = [k for k in own if k not in state_dict]
    if not missing:
        return state_dict
    logger.warning("%s has no weights for %d adapter tensors (layer_type=trf_adp): initialised them, as for "
                   "adapter fine-tuning", source, len(missing))
    return {**state_dict, **{k: own[k] for k in missing}}


def _read_pretraining_checkpoint(path: str, pretrained_model: str) -> Dict[str, Any]:
    """The ``pretrained_model`` pretraining checkpoint at ``path``; a fine-tuned one, or one of the other model
    family (a HuBERT file given to wav2vec_ctc, fairseq#3864, or the reverse), is refused with the way to use it."""
    from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu, require_checkpoint_file

    if path in (None, "", "???"):
        raise ConfigError(f"model.w2v_path is mandatory: set it to the pretrained {pretrained_model} checkpoint")
    require_checkpoint_file("model.w2v_path", path, "the pretrained checkpoint file itself", "checkpoint_best.pt")
    state = load_checkpoint_to_cpu(path)
    kind = checkpoint_kind(state)
    if kind in ("wav2vec_ctc", "hubert_ctc", "w2v_bert_ctc"):
        raise CheckpointError(
            f"model.w2v_path {path} is a fine-tuned CTC checkpoint, not a pretrained one: to fine-tune "
            f"it further, set checkpoint.finetune_from_model={path} and model.w2v_path to the pretrained model "
            "it was fine-tuned from"
        )
    if kind != pretrained_model:
        hint = f": fine-tune it with {FINE_TUNING_RECIPES[kind]}" if kind in FINE_TUNING_RECIPES else ""
        raise CheckpointError(f"model.w2v_path {path} holds a '{kind}' pretraining model, not a {pretrained_model} "
                              f"one{hint}")
    return state


def _output_projection(input_dim: int, output_size: int) -> nn.Linear:
    """The CTC output layer ``proj``: Xavier-uniform weights, zero bias (fairseq's initialisation)."""
    proj = nn.Linear(input_dim, output_size)
    nn.init.xavier_uniform_(proj.weight)
    nn.init.constant_(proj.bias, 0.0)
    return proj


class Wav2VecEncoder(nn.Module):
    """A pretrained wav2vec 2.0 network plus the output projection (fairseq's ``Wav2VecEncoder``).

    Args (the ``Wav2Vec2AsrConfig`` option each mirrors):
        w2v_model: the pretrained ``Wav2Vec2Model``, its pretraining heads removed.
        output_size: size of the output projection ``proj`` (the target dictionary); None for no projection.
        apply_mask: mask the features while training (``apply_mask``).
        final_dropout: dropout before ``proj`` (``final_dropout``).
        freeze_finetune_updates: train only ``proj`` for this many updates (``freeze_finetune_updates``).
        freeze_regex: parameters whose ``w2v_encoder.``-prefixed name matches stay frozen (``freeze_regex``).
    """

    def __init__(self, w2v_model: nn.Module, output_size: Optional[int] = None, apply_mask: bool = False,
                 final_dropout: float = 0.0, freeze_finetune_updates: int = 0, freeze_regex: Optional[str] = None):
        super().__init__()
        self.apply_mask = apply_mask
        self.w2v_model = w2v_model
        self.final_dropout = nn.Dropout(final_dropout)
        self.freeze_finetune_updates = freeze_finetune_updates
        self.num_updates = 0
        self.adapter: Optional[nn.Module] = None
        self.proj = None
        if output_size is not None:
            self.proj = _output_projection(w2v_model.cfg.encoder_embed_dim, output_size)
        if freeze_regex:  # matched against the model's names, e.g. "w2v_encoder.w2v_model.encoder.layers.0.fc1.weight"
            pattern = re.compile(freeze_regex)
            for name, param in self.named_parameters():
                if pattern.search(f"w2v_encoder.{name}"):
                    param.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: Any, output_size: Optional[int] = None, pretrained_model: str = "wav2vec2"
                    ) -> "Wav2VecEncoder":
        """Load the pretrained ``pretrained_model`` (``load_pretrained``) and build the encoder; ``cfg.w2v_args``
        (and ``cfg.layer_type`` where the config has it) are set to what was loaded, so a saved fine-tuned
        checkpoint carries them."""
        _check_supported(cfg)
        w2v_args, weights = load_pretrained(cfg, pretrained_model)
        cfg.w2v_args = w2v_args
        if hasattr(cfg, "layer_type"):
            cfg.layer_type = str(w2v_args["model"].get("layer_type", "transformer"))  # fairseq copies it back too
            if cfg.layer_type == "trf_adp":  # and the adapter options, so the saved model config describes them
                for name in ADAPTER_FIELDS:
                    setattr(cfg, name, w2v_args["model"][name])
        model = build_model(w2v_args["model"], from_checkpoint=True)
        model.remove_pretraining_modules()
        if weights is not None:
            model.load_state_dict(with_initialised_adapters(model, weights, f"model.w2v_path {cfg.w2v_path}"),
                                  strict=True)
        return cls(model, output_size, apply_mask=cfg.apply_mask, final_dropout=cfg.final_dropout,
                   freeze_finetune_updates=cfg.freeze_finetune_updates, freeze_regex=cfg.freeze_regex)

    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates

    def attach_adapter(self, adapter: nn.Module, output_dim: int) -> None:
        """Run ``adapter`` (``(x, padding_mask) -> (x, padding_mask)``, B×T×C; trained even while the pretrained
        network is frozen) between the pretrained network and ``proj``, which is rebuilt for its ``output_dim``
        (HF w2v-BERT's ``add_adapter``)."""
        self.adapter = adapter
        if self.proj is not None and self.proj.in_features != output_dim:
            self.proj = _output_projection(output_dim, self.proj.out_features)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, corpus_key: Any = None,
                **kwargs: Any) -> Dict[str, Any]:
        """``encoder_out`` T×B×V (or T×B×E without ``proj``), ``padding_mask`` B×T (True = padding or None).
        ``corpus_key`` (``net_input``'s language index) selects the adapters of a ``trf_adp`` model."""
        frozen = self.num_updates < self.freeze_finetune_updates
        language = {} if corpus_key is None else {"corpus_key": corpus_key}
        with torch.no_grad() if frozen else contextlib.nullcontext():
            res = self.w2v_model(source=source, padding_mask=padding_mask, mask=self.apply_mask and self.training,
                                 features_only=True, **language)
            x, padding_mask = res["x"], res["padding_mask"]
        if self.adapter is not None:
            x, padding_mask = self.adapter(x, padding_mask)
        x = self.final_dropout(x.transpose(0, 1))
        if self.proj is not None:
            x = self.proj(x)
        return {"encoder_out": x, "encoder_padding_mask": padding_mask, "padding_mask": padding_mask,
                "layer_results": res["layer_results"]}


@register_model("wav2vec_ctc", dataclass=Wav2Vec2CtcConfig)
class Wav2VecCtc(BaseFairseqModel):
    """wav2vec 2.0 with a CTC output layer over the task's target dictionary (blank = index 0, ``<s>``)."""

    def __init__(self, cfg: Wav2Vec2CtcConfig, w2v_encoder: Wav2VecEncoder):
        super().__init__()
        self.cfg = cfg
        self.w2v_encoder = w2v_encoder
        self.blank_weight = getattr(cfg, "blank_weight", 0)  # hubert_ctc has no blank options: fairseq's defaults
        self.blank_mode = str(getattr(cfg, "blank_mode", "add"))

    #: The pretraining model ``w2v_path`` must hold, and the task that gives the target dictionary.
    pretrained_model = "wav2vec2"
    fine_tuning_task = "task._name=audio_finetuning with task.labels (e.g. ltr)"

    @classmethod
    def build_model(cls, cfg: Wav2Vec2CtcConfig, task: Any = None) -> "Wav2VecCtc":
        dictionary = getattr(task, "target_dictionary", None)
        if dictionary is None:
            raise ConfigError(f"{cfg._name or 'the CTC model'} needs a task with a target dictionary: use "
                              f"{cls.fine_tuning_task} and dict.ltr.txt in task.data")
        return cls(cfg, Wav2VecEncoder.from_config(cfg, len(dictionary), cls.pretrained_model))

    def forward(self, **kwargs: Any) -> Dict[str, Any]:
        return self.w2v_encoder(**kwargs)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` the wav2vec 2.0 network's tensor parts in place (see ``Wav2Vec2Model.compile``)."""
        self.w2v_encoder.w2v_model.compile(*args, **kwargs)

    def get_logits(self, net_output: Dict[str, Any], normalize: bool = False) -> torch.Tensor:
        """CTC logits T×B×V with ``blank_weight`` applied; padded frames become [0, −inf, …] (always blank)."""
        logits = net_output["encoder_out"]
        if self.blank_weight != 0:
            blank = logits[..., :1]
            blank = blank + self.blank_weight if self.blank_mode == "add" else torch.full_like(blank, self.blank_weight)
            logits = torch.cat([blank, logits[..., 1:]], dim=-1)
        padding = net_output.get("padding_mask")
        if any_padding(padding):
            forced = torch.full_like(logits[0, 0], float("-inf"))
            forced[0] = 0
            logits = torch.where(padding.t().unsqueeze(-1), forced.to(logits.dtype), logits)
        if normalize:
            logits = torch.log_softmax(logits.float(), dim=-1)
        return logits

    def get_normalized_probs(self, net_output: Dict[str, Any], log_probs: bool, sample: Optional[Dict] = None
                             ) -> torch.Tensor:
        """(log-)softmax of ``get_logits`` in fp32, T×B×V."""
        logits = self.get_logits(net_output).float()
        return torch.log_softmax(logits, dim=-1) if log_probs else torch.softmax(logits, dim=-1)

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, model_cfg: Any = None):
        """Load fine-tuned weights; an output layer of another vocabulary size is re-initialised with a warning,
        and pretraining weights (no ``w2v_encoder.*`` keys) are refused with the way to use them."""
        if state_dict and not any(k.startswith("w2v_encoder.") for k in state_dict):
            raise CheckpointError(
                "these are wav2vec 2.0 pretraining weights (no w2v_encoder.* keys), not a fine-tuned CTC model: "
                "fine-tune from them with model._name=wav2vec_ctc model.w2v_path=<that checkpoint>"
            )
        state_dict = with_initialised_adapters(self, dict(state_dict), "the checkpoint")
        proj = self.w2v_encoder.proj
        stored = state_dict.get("w2v_encoder.proj.weight")
        if proj is not None and stored is not None and stored.shape != proj.weight.shape:
            logger.warning(
                "the checkpoint's output layer has %d units, this model's dictionary %d: re-initialising "
                "w2v_encoder.proj (fine-tuning onto a new vocabulary)", stored.shape[0], proj.weight.shape[0],
            )
            state_dict["w2v_encoder.proj.weight"] = proj.weight.detach().clone()
            state_dict["w2v_encoder.proj.bias"] = proj.bias.detach().clone()
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg)
