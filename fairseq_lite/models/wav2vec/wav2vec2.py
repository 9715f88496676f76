"""wav2vec 2.0 (fairseq's ``models/wav2vec/wav2vec2.py``): ``Wav2Vec2Config`` and the ``wav2vec2`` model.

The module tree reproduces fairseq's state-dict keys (``feature_extractor.conv_layers.0.0.weight``,
``encoder.pos_conv.0.weight_g``, ``quantizer.vars``, ``project_q``, ``final_proj``, ``mask_emb`` …), so
fairseq checkpoints load unchanged. Forward semantics follow fairseq; deliberate fixes are noted where
they happen (negatives are drawn relative to the true own frame; whole-sequence masking raises a DataError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from fairseq_lite.dataclass import ChoiceEnum, FairseqDataclass, help_text
from fairseq_lite.errors import ConfigError
from fairseq_lite.models import BaseFairseqModel, register_model
from fairseq_lite.modules.activations import ACTIVATION_CHOICES
from fairseq_lite.modules.adapter import parse_adapter_layers
from fairseq_lite.models.wav2vec.wav2vec import parse_conv_layers
from fairseq_lite.modules.conv_feature_extractor import ConvFeatureExtractionModel, ConvSpec, receptive_field
from fairseq_lite.modules.grad_multiply import GradMultiply
from fairseq_lite.modules.gumbel_vector_quantizer import GumbelVectorQuantizer
from fairseq_lite.modules.masking import masked_frames, masker_from_config
from fairseq_lite.modules.negatives import contrastive_logits, sample_negatives
from fairseq_lite.modules.static_shapes import any_padding, is_xla_tensor
from fairseq_lite.modules.transformer_encoder import TransformerEncoder

EXTRACTOR_MODE_CHOICES = ChoiceEnum(["default", "layer_norm"])
MASKING_DISTRIBUTION_CHOICES = ChoiceEnum(["static", "uniform", "normal", "poisson"])
LAYER_TYPE_CHOICES = ChoiceEnum(["transformer", "conformer", "trf_adp"])
ACTIVATION_FN_CHOICES = ChoiceEnum(ACTIVATION_CHOICES)



@dataclass
class Wav2Vec2Config(FairseqDataclass):
    """Every field of fairseq's ``Wav2Vec2Config`` with its default."""

    extractor_mode: EXTRACTOR_MODE_CHOICES = field(default="default", metadata=help_text(
        "mode for feature extractor: default has a single group norm with d groups in the first conv block, "
        "layer_norm has layer norms in every block (meant to use with normalize=True)"))
    encoder_layers: int = field(default=12, metadata=help_text("num encoder layers in the transformer"))
    encoder_embed_dim: int = field(default=768, metadata=help_text("encoder embedding dimension"))
    encoder_ffn_embed_dim: int = field(default=3072, metadata=help_text("encoder embedding dimension for FFN"))
    encoder_attention_heads: int = field(default=12, metadata=help_text("num encoder attention heads"))
    activation_fn: ACTIVATION_FN_CHOICES = field(default="gelu", metadata=help_text("activation function to use"))
    layer_type: LAYER_TYPE_CHOICES = field(default="transformer", metadata=help_text("layer type in encoder"))
    dropout: float = field(default=0.1, metadata=help_text("dropout probability for the transformer"))
    attention_dropout: float = field(default=0.1, metadata=help_text("dropout probability for attention weights"))
    activation_dropout: float = field(default=0.0, metadata=help_text("dropout probability after activation in FFN"))
    encoder_layerdrop: float = field(default=0.0, metadata=help_text("probability of dropping a transformer layer"))
    dropout_input: float = field(default=0.0, metadata=help_text("dropout to apply to the input (after feat extr)"))
    dropout_features: float = field(default=0.0, metadata=help_text("dropout to apply to the features (after feat extr)"))
    final_dim: int = field(default=0, metadata=help_text(
        "project final representations and targets to this many dimensions; set to encoder_embed_dim is <= 0"))
    layer_norm_first: bool = field(default=False, metadata=help_text("apply layernorm first in the transformer"))
    conv_feature_layers: str = field(
        default="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
        metadata=help_text("string describing convolutional feature extraction layers in form of a python list "
                    "that contains [(dim, kernel_size, stride), ...]"))
    conv_bias: bool = field(default=False, metadata=help_text("include bias in conv encoder"))
    logit_temp: float = field(default=0.1, metadata=help_text("temperature to divide logits by"))
    quantize_targets: bool = field(default=False, metadata=help_text("use quantized targets"))
    quantize_input: bool = field(default=False, metadata=help_text("use quantized inputs"))
    same_quantizer: bool = field(default=False, metadata=help_text("use same quantizer for inputs and targets"))
    target_glu: bool = field(default=False, metadata=help_text("adds projection + glu to targets"))
    feature_grad_mult: float = field(default=1.0, metadata=help_text("multiply feature extractor var grads by this"))
    quantizer_depth: int = field(default=1, metadata=help_text("number of quantizer layers"))
    quantizer_factor: int = field(default=3, metadata=help_text(
        "dimensionality increase for inner quantizer layers (if depth > 1)"))
    latent_vars: int = field(default=320, metadata=help_text("number of latent variables V in each group of the codebook"))
    latent_groups: int = field(default=2, metadata=help_text("number of groups G of latent variables in the codebook"))
    latent_dim: int = field(default=0, metadata=help_text(
        "if > 0, uses this dimensionality for latent variables. otherwise uses final_dim / latent_groups"))
    mask_length: int = field(default=10, metadata=help_text("mask length"))
    mask_prob: float = field(default=0.65, metadata=help_text("probability of replacing a token with mask"))
    mask_selection: MASKING_DISTRIBUTION_CHOICES = field(default="static", metadata=help_text("how to choose mask length"))
    mask_other: float = field(default=0, metadata=help_text(
        "secondary mask argument (used for more complex distributions), see help in compute_mask_indices"))
    no_mask_overlap: bool = field(default=False, metadata=help_text("whether to allow masks to overlap"))
    mask_min_space: int = field(default=1, metadata=help_text("min space between spans (if no overlap is enabled)"))
    require_same_masks: bool = field(default=True, metadata=help_text(
        "whether to number of masked timesteps must be the same across all examples in a batch"))
    mask_dropout: float = field(default=0.0, metadata=help_text("percent of masks to unmask for each sample"))
    mask_channel_length: int = field(default=10, metadata=help_text("length of the mask for features (channels)"))
    mask_channel_prob: float = field(default=0.0, metadata=help_text("probability of replacing a feature with 0"))
    mask_channel_before: bool = False
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = field(default="static", metadata=help_text(
        "how to choose mask length for channel masking"))
    mask_channel_other: float = field(default=0, metadata=help_text(
        "secondary mask argument (used for more complex distributions), see help in compute_mask_indices"))
    no_mask_channel_overlap: bool = field(default=False, metadata=help_text("whether to allow channel masks to overlap"))
    mask_channel_min_space: int = field(default=1, metadata=help_text(
        "min space between spans (if no overlap is enabled)"))
    num_negatives: int = field(default=100, metadata=help_text("number of negative examples from the same sample"))
    negatives_from_everywhere: bool = field(default=False, metadata=help_text(
        "sample negatives from everywhere, not just masked states"))
    cross_sample_negatives: int = field(default=0, metadata=help_text("number of negative examples from the any sample"))
    codebook_negatives: int = field(default=0, metadata=help_text("number of negative examples codebook"))
    conv_pos: int = field(default=128, metadata=help_text("number of filters for convolutional positional embeddings"))
    conv_pos_groups: int = field(default=16, metadata=help_text(
        "number of groups for convolutional positional embedding"))
    pos_conv_depth: int = field(default=1, metadata=help_text("depth of positional encoder network"))
    latent_temp: Tuple[float, float, float] = field(default=(2, 0.5, 0.999995), metadata=help_text(
        "temperature for latent variable sampling. can be tuple of 3 values (start, end, decay)"))
    max_positions: int = field(default=100000, metadata=help_text("Max positions"))
    checkpoint_activations: bool = field(default=False, metadata=help_text(
        "recompute activations and save memory for extra compute"))
    required_seq_len_multiple: int = field(default=2, metadata=help_text(
        "pad the input to encoder such that the sequence length is divisible by multiple"))
    crop_seq_to_multiple: int = field(default=1, metadata=help_text(
        "crop convolutional feature extractor output such that the sequence length is divisible by multiple"))
    depthwise_conv_kernel_size: int = field(default=31, metadata=help_text(
        "depthwise-conv-kernel-size for convolution in conformer layer"))
    attn_type: str = field(default="", metadata=help_text("if espnet use ESPNET MHA"))
    pos_enc_type: str = field(default="abs", metadata=help_text("Positional encoding type to use in conformer"))
    fp16: bool = field(default=False, metadata=help_text("If fp16 is being used"))
    adp_num: int = field(default=-1, metadata=help_text(
        "number of language adapters per layer (layer_type trf_adp; one per task.multi_corpus_keys entry)"))
    adp_dim: int = field(default=64, metadata=help_text("bottleneck dimension of the adapters"))
    adp_act_fn: str = field(default="relu", metadata=help_text("activation of the adapters: relu, gelu or selu"))
    adp_trf_idx: str = field(default="all", metadata=help_text(
        "which transformer layers get adapters: all, or a Python range start:stop"))

    def check_values(self, cfg: Any) -> None:
        """Checked when the config is read: the heads divide the width, ``trf_adp``'s adapter options are valid,
        the CNN spec parses, and the task's crop (``task.max_sample_size``) is long enough for the CNN to give
        a frame."""
        heads, dim = self.encoder_attention_heads, self.encoder_embed_dim
        if heads <= 0 or dim % heads:
            closest = min((h for h in range(1, dim + 1) if dim % h == 0), key=lambda h: abs(h - heads))
            raise ConfigError(
                f"model.encoder_attention_heads={heads} does not divide model.encoder_embed_dim={dim}: choose a "
                f"number of heads that does (e.g. {closest})"
            )
        if str(self.layer_type) == "trf_adp":
            adapter_arguments(self)
        layers = parse_feature_layers(self.conv_feature_layers)
        max_sample_size = getattr(cfg.task, "max_sample_size", None)
        needed = receptive_field(layers)
        if max_sample_size is not None and max_sample_size < needed:
            raise ConfigError(
                f"task.max_sample_size={max_sample_size} is below the receptive field of model.conv_feature_layers "
                f"({needed} samples), so every cropped clip would give zero frames: raise task.max_sample_size"
            )


def parse_feature_layers(spec: Any) -> List[ConvSpec]:
    """``model.conv_feature_layers`` as (dim, kernel, stride) triples; a ConfigError naming the key otherwise."""
    try:
        return parse_conv_layers(spec, "conv_feature_layers")
    except ConfigError as exc:
        if str(exc).startswith("model.conv_feature_layers"):
            raise
        raise ConfigError(f"model.conv_feature_layers: {exc}") from None  # a syntax error of the literal


def encoder_arguments(cfg: Any) -> Dict[str, Any]:
    """``TransformerEncoder``'s arguments from a model config's ``encoder_*`` and position fields (shared by every
    model with fairseq's wav2vec 2.0 context network; HuBERT's config has no ``pos_conv_depth``: 1, as fairseq)."""
    return dict(
        embed_dim=cfg.encoder_embed_dim, num_layers=cfg.encoder_layers, ffn_dim=cfg.encoder_ffn_embed_dim,
        num_heads=cfg.encoder_attention_heads, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, activation_fn=str(cfg.activation_fn),
        layer_norm_first=cfg.layer_norm_first, layerdrop=cfg.encoder_layerdrop, conv_pos=cfg.conv_pos,
        conv_pos_groups=cfg.conv_pos_groups, pos_conv_depth=getattr(cfg, "pos_conv_depth", 1),
        required_seq_len_multiple=cfg.required_seq_len_multiple, checkpoint_activations=cfg.checkpoint_activations,
    )


def conformer_arguments(cfg: Any) -> Dict[str, Any]:
    """``ConformerEncoder``'s own arguments (``layer_type=conformer``; without ``max_positions`` in the config,
    as HuBERT's, wav2vec 2.0's default)."""
    return dict(depthwise_conv_kernel_size=cfg.depthwise_conv_kernel_size, attn_type=str(cfg.attn_type),
                pos_enc_type=str(cfg.pos_enc_type), max_positions=getattr(cfg, "max_positions", 100000))


def adapter_arguments(cfg: Any) -> Dict[str, Any]:
    """``TransformerEncoder``'s adapter arguments for ``layer_type=trf_adp`` (``adp_num``, ``adp_dim``,
    ``adp_act_fn``, ``adp_trf_idx``), checked: ``adp_num`` must be positive."""
    if cfg.adp_num <= 0:
        raise ConfigError(f"model.layer_type=trf_adp with model.adp_num={cfg.adp_num}: set model.adp_num to the "
                          "number of languages (one adapter each, in task.multi_corpus_keys order)")
    return dict(adapter_num=cfg.adp_num, adapter_dim=cfg.adp_dim, adapter_act_fn=str(cfg.adp_act_fn),
                adapter_layers=parse_adapter_layers(cfg.adp_trf_idx, cfg.encoder_layers))


def build_context_encoder(cfg: Any) -> nn.Module:
    """The transformer (with MMS adapters for ``trf_adp``) or conformer context network ``layer_type`` selects."""
    layer_type = str(cfg.layer_type)
    if layer_type == "conformer":
        from fairseq_lite.modules.conformer_encoder import ConformerEncoder

        return ConformerEncoder(**encoder_arguments(cfg), **conformer_arguments(cfg))
    adapters = adapter_arguments(cfg) if layer_type == "trf_adp" else {}
    return TransformerEncoder(**encoder_arguments(cfg), **adapters)


@register_model("wav2vec2", dataclass=Wav2Vec2Config)
class Wav2Vec2Model(BaseFairseqModel):
    """CNN feature encoder → masking → context encoder, trained to pick the (quantised) true latent of each
    masked frame among distractors (fairseq's ``Wav2Vec2Model``)."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.cfg = cfg
        feature_layers = parse_feature_layers(cfg.conv_feature_layers)
        self.embed = feature_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(
            feature_layers, dropout=0.0, mode=str(cfg.extractor_mode), conv_bias=cfg.conv_bias
        )
        self.post_extract_proj = (
            nn.Linear(self.embed, cfg.encoder_embed_dim)
            if self.embed != cfg.encoder_embed_dim and not cfg.quantize_input else None
        )
        self.crop_seq_to_multiple = cfg.crop_seq_to_multiple
        self.masker = masker_from_config(cfg)

        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.feature_grad_mult = cfg.feature_grad_mult
        self.n_negatives = cfg.num_negatives
        self.cross_sample_negatives = cfg.cross_sample_negatives
        self.codebook_negatives = cfg.codebook_negatives
        self.negatives_from_everywhere = cfg.negatives_from_everywhere
        self.logit_temp = cfg.logit_temp

        final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
        if cfg.quantize_targets:
            vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else final_dim
            self.quantizer = self._build_quantizer(cfg, vq_dim)
            self.project_q = nn.Linear(vq_dim, final_dim)
        else:
            self.quantizer = None
            self.project_q = nn.Linear(self.embed, final_dim)

        self.input_quantizer = None
        self.project_inp = None
        if cfg.quantize_input:
            if cfg.same_quantizer and self.quantizer is not None:
                vq_dim = final_dim
                self.input_quantizer = self.quantizer
            else:
                vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else cfg.encoder_embed_dim
                self.input_quantizer = self._build_quantizer(cfg, vq_dim)
            self.project_inp = nn.Linear(vq_dim, cfg.encoder_embed_dim)

        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = build_context_encoder(cfg)
        self.layer_norm = nn.LayerNorm(self.embed)
        self.target_glu = nn.Sequential(nn.Linear(final_dim, final_dim * 2), nn.GLU()) if cfg.target_glu else None
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, final_dim)

    def _build_quantizer(self, cfg: Wav2Vec2Config, vq_dim: int) -> GumbelVectorQuantizer:
        return GumbelVectorQuantizer(
            dim=self.embed, num_vars=cfg.latent_vars, temp=cfg.latent_temp, groups=cfg.latent_groups,
            combine_groups=False, vq_dim=vq_dim, time_first=True, weight_proj_depth=cfg.quantizer_depth,
            weight_proj_factor=cfg.quantizer_factor,
        )

    @classmethod
    def build_model(cls, cfg: Wav2Vec2Config, task: Any = None) -> "Wav2Vec2Model":
        return cls(cfg)

    def max_positions(self) -> int:
        return self.cfg.max_positions

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` in place (fairseq_lite's ``common.compile``; arguments as ``torch.compile``'s) the
        parts that are pure tensor code: the CNN feature extractor, the positional convolution and each
        encoder layer. Masking and negative sampling (NumPy, data-dependent shapes) stay eager, so the model
        computes what the eager one computes and its state-dict keys do not change."""
        for part in (self.feature_extractor, self.encoder.pos_conv, *self.encoder.layers):
            part.compile(*args, **kwargs)

    # -- masking -----------------------------------------------------------------------------------

    def apply_mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor],
                   mask_indices: Optional[torch.Tensor] = None,
                   mask_channel_indices: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Zero masked channels (before or after time masking) and replace masked frames by ``mask_emb``."""
        return self.masker(x, padding_mask, self.mask_emb, mask_indices, mask_channel_indices)

    # -- contrastive targets -------------------------------------------------------------------------

    def compute_preds(self, x: torch.Tensor, y: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Cosine similarity / logit_temp of x (B×M×C) with [positive y; negatives], in fp32 → (1+N)×B×M.
        A negative numerically identical to its positive gets −inf."""
        return contrastive_logits(x, y, negatives, self.logit_temp)

    def _feature_lengths_mask(self, padding_mask: Optional[torch.Tensor], features: torch.Tensor
                              ) -> Optional[torch.Tensor]:
        """Frame-level padding mask (True at or beyond each row's conv output length) from a sample-level one."""
        if not any_padding(padding_mask):
            return None
        input_lengths = (~padding_mask).long().sum(-1)
        output_lengths = self.feature_extractor.output_lengths(input_lengths)
        frames = torch.arange(features.size(1), device=features.device)
        return frames.unsqueeze(0) >= output_lengths.unsqueeze(1)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask: bool = True,
                features_only: bool = False, layer: Optional[int] = None,
                mask_indices: Optional[torch.Tensor] = None, mask_channel_indices: Optional[torch.Tensor] = None,
                padding_count: Optional[int] = None, corpus_key: Any = None) -> Dict[str, Any]:
        """fairseq's forward. ``source`` B×L samples, ``padding_mask`` B×L (True = padding).

        Pretraining output: ``x`` ((1+N)×B×M logits), ``padding_mask``, ``features_pen`` and the quantizer's
        ``num_vars``/``code_perplexity``/``prob_perplexity``/``temp``. With ``features_only``: ``x`` (B×T×E),
        ``padding_mask``, ``features`` (unmasked CNN features), ``layer_results``. ``corpus_key`` (the language's
        index, one for the batch or one per sample) selects the adapters of a ``trf_adp`` model.
        """
        features, unmasked_features, padding_mask, features_pen = self._encode_features(
            source, padding_mask, features_only)
        result: Dict[str, Any] = {}
        if self.input_quantizer is not None:
            q = self.input_quantizer(features, produce_targets=False)
            result.update({k: q[k] for k in ("num_vars", "code_perplexity", "prob_perplexity", "temp")})
            features = self.project_inp(q["x"])

        if mask:
            x, mask_indices = self.apply_mask(features, padding_mask, mask_indices, mask_channel_indices)
        else:
            x, mask_indices = features, None
        # fairseq's TPU path keeps every frame (static shapes); the criterion weights the loss by the mask
        keep_all_frames = is_xla_tensor(features)
        if mask_indices is not None and not keep_all_frames:
            y = masked_frames(unmasked_features, mask_indices)
        else:
            y = unmasked_features

        x, layer_results = self.encoder(x, padding_mask=padding_mask, layer=layer, corpus_key=corpus_key)
        if features_only:
            return {"x": x, "padding_mask": padding_mask, "features": unmasked_features,
                    "layer_results": layer_results}

        if mask_indices is None:
            raise ValueError("the contrastive forward needs masked frames: call with mask=True and mask_prob > 0")
        y, negs = self._targets_and_negatives(y, unmasked_features, mask_indices, padding_count, result,
                                              keep_all_frames)
        if keep_all_frames:
            result["mask_indices"] = mask_indices
        else:
            x = masked_frames(x, mask_indices)
        if self.target_glu is not None:
            y = self.target_glu(y)
            negs = self.target_glu(negs)
        x = self.final_proj(x)
        result.update({"x": self.compute_preds(x, y, negs), "padding_mask": padding_mask,
                       "features_pen": features_pen})
        return result

    def _encode_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor], features_only: bool
                         ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """CNN → LayerNorm → (crop to ``crop_seq_to_multiple``) → ``post_extract_proj`` and dropouts: (encoder
        input B×T×E, unmasked features B×T×C for the targets, the frame padding mask, the feature penalty)."""
        if self.feature_grad_mult > 0:
            features = self.feature_extractor(source)
            if self.feature_grad_mult != 1.0:
                features = GradMultiply.apply(features, self.feature_grad_mult)
        else:
            with torch.no_grad():
                features = self.feature_extractor(source)
        features_pen = None if features_only else features.float().pow(2).mean()
        features = self.layer_norm(features.transpose(1, 2))
        unmasked_features = features  # nothing below writes in place, so no copy is needed
        padding_mask = self._feature_lengths_mask(padding_mask, features)
        drop = features.size(1) % self.crop_seq_to_multiple
        if drop:
            features = features[:, :-drop]
            unmasked_features = unmasked_features[:, :-drop]
            if padding_mask is not None:
                padding_mask = padding_mask[:, :-drop]
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        return self.dropout_input(features), self.dropout_features(unmasked_features), padding_mask, features_pen

    def _targets_and_negatives(self, y: torch.Tensor, unmasked: torch.Tensor, mask_indices: torch.Tensor,
                               padding_count: Optional[int], result: Dict[str, Any], keep_all_frames: bool
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Projected (quantised) targets of the masked frames (B×M×final_dim) and their distractors; with
        ``keep_all_frames`` (XLA) of every frame (B×T), distractors drawn from every frame as in fairseq on TPU."""
        bsz, num = y.shape[:2]
        everywhere = self.negatives_from_everywhere and not keep_all_frames  # all frames already are everywhere
        if everywhere:
            # distractors come from every frame; each masked frame excludes itself
            positions = torch.nonzero(mask_indices)[:, 1].view(bsz, num)
            source = unmasked
        else:
            positions, source = None, y
        if self.quantizer is not None:
            q = self.quantizer(source, produce_targets=False)
            result.update({k: q[k] for k in ("num_vars", "code_perplexity", "prob_perplexity", "temp")})
            source = self.project_q(q["x"])
        else:
            source = self.project_q(source)
        negs, _ = sample_negatives(source, num, self.n_negatives, self.cross_sample_negatives,
                                   padding_count=padding_count, positions=positions)
        if everywhere:
            y = masked_frames(source, mask_indices)
        else:
            y = source
        if self.codebook_negatives > 0 and self.quantizer is not None:
            cb = self.quantizer.sample_from_codebook(bsz * num, self.codebook_negatives)
            cb = cb.view(bsz, num, self.codebook_negatives, -1).permute(2, 0, 1, 3)
            negs = torch.cat([negs, self.project_q(cb)], dim=0)
        return y, negs

    # -- criterion interface -------------------------------------------------------------------------

    def get_logits(self, net_output: Dict[str, Any]) -> torch.Tensor:
        """(1+N)×B×M → (M·B)×(1+N): one row per masked frame, the positive in column 0."""
        logits = net_output["x"].transpose(0, 2)
        return logits.reshape(-1, logits.size(-1))

    def get_targets(self, sample: Any, net_output: Dict[str, Any], expand_steps: bool = True) -> torch.Tensor:
        x = net_output["x"]
        return x.new_zeros(x.size(1) * x.size(2), dtype=torch.long)

    def get_extra_losses(self, net_output: Dict[str, Any]) -> List[torch.Tensor]:
        """[codebook diversity (G·V − prob_perplexity)/(G·V), features_pen] where present."""
        pen = []
        if "prob_perplexity" in net_output:
            pen.append((net_output["num_vars"] - net_output["prob_perplexity"]) / net_output["num_vars"])
        if "features_pen" in net_output:
            pen.append(net_output["features_pen"])
        return pen

    # -- feature extraction / fine-tuning helpers -----------------------------------------------------

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                         mask: bool = False, layer: Optional[int] = None, corpus_key: Any = None
                         ) -> Dict[str, Any]:
        return self.forward(source, padding_mask, mask=mask, features_only=True, layer=layer, corpus_key=corpus_key)

    def quantize(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Quantised CNN features and their code indices for raw audio ``x`` (fairseq's ``quantize``)."""
        if self.quantizer is None:
            raise ValueError("this model has no quantizer (quantize_targets was false or it was removed)")
        x = self.feature_extractor(x).transpose(1, 2)
        return self.quantizer.forward_idx(self.layer_norm(x))

    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        """Drop the quantizer and projection heads for fine-tuning (they stay registered as None, so a
        pretraining state dict still loads strictly), optionally keeping layers up to ``last_layer``."""
        self.quantizer = None
        self.project_q = None
        self.target_glu = None
        self.final_proj = None
        if last_layer is not None:
            self.encoder.layers = nn.ModuleList(l for i, l in enumerate(self.encoder.layers) if i <= last_layer)
