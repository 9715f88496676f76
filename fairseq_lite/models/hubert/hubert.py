"""HuBERT (fairseq's ``models/hubert/hubert.py``): ``HubertConfig`` and the ``hubert`` model.

The wav2vec 2.0 CNN feature extractor and context encoder (transformer or conformer) predict, for each frame,
the k-means cluster id of a teacher's features: the logit of class ``k`` is the cosine between ``final_proj(x)``
and the learned embedding ``label_embs_concat[k]``, divided by ``logit_temp``. State-dict keys are fairseq's
(``feature_extractor.*``, ``post_extract_proj``, ``mask_emb``, ``encoder.*``, ``layer_norm``, ``final_proj``,
``label_embs_concat``; files from before fairseq renamed it call it ``label_embs``).

Differences from fairseq, each a fix: a batch without padding, or a forward without masking, computes the
losses it can (fairseq indexes a None padding mask and fails); padded frames are found by the same
sample-to-frame reshaping fairseq uses, so masks and losses agree with fairseq's on the same batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fairseq_lite.dataclass import FairseqDataclass, field_like, help_text, II
from fairseq_lite.models import BaseFairseqModel, register_model
from fairseq_lite.models.wav2vec.wav2vec2 import (
    ACTIVATION_FN_CHOICES, EXTRACTOR_MODE_CHOICES, LAYER_TYPE_CHOICES, MASKING_DISTRIBUTION_CHOICES,
    Wav2Vec2Config, build_context_encoder, parse_feature_layers,
)
from fairseq_lite.modules.conv_feature_extractor import ConvFeatureExtractionModel
from fairseq_lite.modules.grad_multiply import GradMultiply
from fairseq_lite.modules.masking import masker_from_config


#: The field of ``Wav2Vec2Config`` named ``name`` (HuBERT repeats most of wav2vec 2.0's options).
_w2v = functools.partial(field_like, Wav2Vec2Config)


@dataclass
class HubertConfig(FairseqDataclass):
    """Every field of fairseq's ``HubertConfig`` with its default (``mask_prob`` 0.65 here; the yamls set 0.80)."""

    label_rate: float = II("task.label_rate")
    extractor_mode: EXTRACTOR_MODE_CHOICES = _w2v("extractor_mode")
    encoder_layers: int = _w2v("encoder_layers")
    encoder_embed_dim: int = _w2v("encoder_embed_dim")
    encoder_ffn_embed_dim: int = _w2v("encoder_ffn_embed_dim")
    encoder_attention_heads: int = _w2v("encoder_attention_heads")
    activation_fn: ACTIVATION_FN_CHOICES = _w2v("activation_fn")
    layer_type: LAYER_TYPE_CHOICES = _w2v("layer_type")
    dropout: float = _w2v("dropout")
    attention_dropout: float = _w2v("attention_dropout")
    activation_dropout: float = _w2v("activation_dropout")
    encoder_layerdrop: float = _w2v("encoder_layerdrop")
    dropout_input: float = _w2v("dropout_input")
    dropout_features: float = _w2v("dropout_features")
    final_dim: int = _w2v("final_dim")
    untie_final_proj: bool = field(default=False, metadata=help_text("use separate projection for each target"))
    layer_norm_first: bool = _w2v("layer_norm_first")
    conv_feature_layers: str = _w2v("conv_feature_layers", default="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    conv_bias: bool = _w2v("conv_bias")
    logit_temp: float = _w2v("logit_temp")
    target_glu: bool = _w2v("target_glu")
    feature_grad_mult: float = _w2v("feature_grad_mult")
    mask_length: int = _w2v("mask_length")
    mask_prob: float = _w2v("mask_prob")
    mask_selection: MASKING_DISTRIBUTION_CHOICES = _w2v("mask_selection")
    mask_other: float = _w2v("mask_other")
    no_mask_overlap: bool = _w2v("no_mask_overlap")
    mask_min_space: int = _w2v("mask_min_space")
    mask_channel_length: int = _w2v("mask_channel_length")
    mask_channel_prob: float = _w2v("mask_channel_prob")
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = _w2v("mask_channel_selection")
    mask_channel_other: float = _w2v("mask_channel_other")
    no_mask_channel_overlap: bool = _w2v("no_mask_channel_overlap")
    mask_channel_min_space: int = _w2v("mask_channel_min_space")
    conv_pos: int = _w2v("conv_pos")
    conv_pos_groups: int = _w2v("conv_pos_groups")
    latent_temp: Tuple[float, float, float] = field(default=(2, 0.5, 0.999995),
                                                    metadata=help_text("legacy (to be removed)"))
    skip_masked: bool = field(default=False, metadata=help_text("skip computing losses over masked frames"))
    skip_nomask: bool = field(default=False, metadata=help_text("skip computing losses over unmasked frames"))
    checkpoint_activations: bool = _w2v("checkpoint_activations")
    required_seq_len_multiple: int = _w2v("required_seq_len_multiple")
    depthwise_conv_kernel_size: int = _w2v("depthwise_conv_kernel_size")
    attn_type: str = _w2v("attn_type")
    pos_enc_type: str = _w2v("pos_enc_type")
    fp16: bool = _w2v("fp16")

    def check_values(self, cfg: Any) -> None:
        """The same checks as wav2vec 2.0's (heads divide the width, the CNN spec parses, the crop gives frames)."""
        Wav2Vec2Config.check_values(self, cfg)


def label_logits(x: torch.Tensor, targets: torch.Tensor, label_embs: torch.Tensor, logit_temp: float
                 ) -> torch.Tensor:
    """fairseq's ``compute_nce`` against every class: S×(1+K) logits, the true class's cosine / temp in column
    0, then every class's, with the true class (and any class whose embedding equals it) at −inf."""
    cosine = F.normalize(x.float(), dim=-1, eps=1e-8) @ F.normalize(label_embs.float(), dim=-1, eps=1e-8).t()
    cosine = cosine.to(x.dtype) / logit_temp
    positive = cosine.gather(1, targets.long().unsqueeze(1))
    _, embedding_id = torch.unique(label_embs, dim=0, return_inverse=True)
    same_as_positive = embedding_id[targets.long()].unsqueeze(1) == embedding_id.unsqueeze(0)
    return torch.cat([positive, cosine.masked_fill(same_as_positive, float("-inf"))], dim=1)


@register_model("hubert", dataclass=HubertConfig)
class HubertModel(BaseFairseqModel):
    """CNN → masking → context encoder, trained to predict each frame's k-means label (fairseq's ``HubertModel``).

    Args:
        cfg: the ``HubertConfig``.
        num_classes: the size of each label set's dictionary (``task.dictionaries``); None when the model is
            built for fine-tuning or feature extraction only (no ``label_embs_concat``).
        sample_rate: the audio rate (``task.sample_rate``), for the label-to-frame ratio.
    """

    def __init__(self, cfg: HubertConfig, num_classes: Optional[List[int]] = None, sample_rate: int = 16000):
        super().__init__()
        self.cfg = cfg
        feature_layers = parse_feature_layers(cfg.conv_feature_layers)
        self.embed = feature_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(
            feature_layers, dropout=0.0, mode=str(cfg.extractor_mode), conv_bias=cfg.conv_bias)
        stride = math.prod(layer_stride for _, _, layer_stride in feature_layers)
        self.feat2tar_ratio = cfg.label_rate * stride / sample_rate
        self.post_extract_proj = (
            nn.Linear(self.embed, cfg.encoder_embed_dim) if self.embed != cfg.encoder_embed_dim else None)
        self.masker = masker_from_config(cfg)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.feature_grad_mult = cfg.feature_grad_mult
        self.logit_temp = cfg.logit_temp
        self.skip_masked = cfg.skip_masked
        self.skip_nomask = cfg.skip_nomask
        final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = build_context_encoder(cfg)
        self.layer_norm = nn.LayerNorm(self.embed)
        self.target_glu = nn.Sequential(nn.Linear(final_dim, final_dim * 2), nn.GLU()) if cfg.target_glu else None
        self.untie_final_proj = cfg.untie_final_proj
        num_label_sets = len(num_classes) if num_classes else 1
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, final_dim * (num_label_sets if cfg.untie_final_proj else 1))
        self.num_classes = list(num_classes) if num_classes else None
        self.label_embs_concat = None
        if num_classes:
            self.label_embs_concat = nn.Parameter(torch.empty(sum(num_classes), final_dim).uniform_())

    @classmethod
    def build_model(cls, cfg: HubertConfig, task: Any = None) -> "HubertModel":
        """The label embeddings are sized from ``task.dictionaries`` (none for a fine-tuning task)."""
        dictionaries = getattr(task, "dictionaries", None) if task is not None else None
        num_classes = [len(d) for d in dictionaries] if dictionaries else None
        sample_rate = getattr(getattr(task, "cfg", None), "sample_rate", 16000)
        return cls(cfg, num_classes, sample_rate)

    def upgrade_state_dict_named(self, state_dict: Dict[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
        """``label_embs`` (HuBERT files written before fairseq's rename, ``update_ckpt.py``) → ``label_embs_concat``."""
        prefix = f"{name}." if name else ""
        if f"{prefix}label_embs" in state_dict:
            state_dict[f"{prefix}label_embs_concat"] = state_dict.pop(f"{prefix}label_embs")
        return super().upgrade_state_dict_named(state_dict, name)

    def adopt_label_embeddings(self, stored: Optional[torch.Tensor]) -> None:
        """A model built without dictionaries (for fine-tuning) takes ``label_embs_concat``'s shape from the
        weights it loads, frozen and unused: fairseq keeps the key in fine-tuned files and reads them strictly."""
        if self.num_classes is not None:
            return
        self.label_embs_concat = None
        if stored is not None:
            self.label_embs_concat = nn.Parameter(torch.empty_like(stored, device=self.mask_emb.device),
                                                  requires_grad=False)

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, model_cfg: Any = None):
        """Load weights (``label_embs`` renamed; label embeddings adopted by a fine-tuning model); a backbone file
        without ``final_proj`` (imported from HF, which has no pretraining head) drops the pretraining heads, and
        keeps this model's fresh ``mask_emb`` where the file has none (HF builds no ``masked_spec_embed`` when its
        config never masks)."""
        self.adopt_label_embeddings(state_dict.get("label_embs_concat", state_dict.get("label_embs")))
        if "final_proj.weight" not in state_dict and self.label_embs_concat is None:
            self.remove_pretraining_modules()
            state_dict = {"mask_emb": self.mask_emb.detach(), **state_dict}
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` the CNN, the positional convolution and each encoder layer in place (as wav2vec 2.0)."""
        for part in (self.feature_extractor, self.encoder.pos_conv, *self.encoder.layers):
            part.compile(*args, **kwargs)

    # -- the network -------------------------------------------------------------------------------

    def forward_features(self, source: torch.Tensor) -> torch.Tensor:
        """CNN features B×C×T, their gradient scaled by ``feature_grad_mult`` (none at 0)."""
        if self.feature_grad_mult <= 0:
            with torch.no_grad():
                return self.feature_extractor(source)
        features = self.feature_extractor(source)
        if self.feature_grad_mult != 1.0:
            features = GradMultiply.apply(features, self.feature_grad_mult)
        return features

    def forward_targets(self, features: torch.Tensor, target_list: List[torch.Tensor]
                        ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Crop the frames to those the labels cover and pick each frame's label (frame t ↦ label
        ⌊t·feat2tar_ratio⌋, ``label_rate`` · CNN stride / sample rate)."""
        frames = features.size(2)
        label_frames = min(t.size(1) for t in target_list)
        if self.feat2tar_ratio * frames > label_frames:
            frames = int(label_frames / self.feat2tar_ratio)
            features = features[..., :frames]
        indices = (torch.arange(frames).float() * self.feat2tar_ratio).long().to(target_list[0].device)
        return features, [t[:, indices] for t in target_list]

    @staticmethod
    def forward_padding_mask(features: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Frame padding mask B×T: a frame is padding when every sample of its slice of the input is (fairseq's
        reshaping of the sample mask into T equal slices, the remainder dropped)."""
        extra = padding_mask.size(1) % features.size(1)
        if extra > 0:
            padding_mask = padding_mask[:, :-extra]
        return padding_mask.view(padding_mask.size(0), features.size(1), -1).all(-1)

    def forward(self, source: torch.Tensor, target_list: Optional[List[torch.Tensor]] = None,
                padding_mask: Optional[torch.Tensor] = None, mask: bool = True, features_only: bool = False,
                output_layer: Optional[int] = None, mask_indices: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """fairseq's forward; ``output_layer`` is 1-based. Pretraining output: ``logit_m_list`` / ``logit_u_list``
        (one S×(1+K) tensor per label set, or None where skipped), ``padding_mask``, ``features_pen``. With
        ``features_only``: ``x`` B×T×D, ``padding_mask``, ``features`` (encoder input) and ``layer_results``.
        ``mask_indices`` B×T replaces the drawn time mask (to replay a recorded one)."""
        features = self.forward_features(source)
        if target_list is not None:
            features, target_list = self.forward_targets(features, target_list)
        features_pen = features.float().pow(2).mean()
        features = self.layer_norm(features.transpose(1, 2))
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        if mask:
            x, mask_indices = self.masker(features, padding_mask, self.mask_emb, mask_indices)
        else:
            x, mask_indices = features, None
        x, layer_results = self.encoder(x, padding_mask=padding_mask,
                                        layer=None if output_layer is None else output_layer - 1)
        if features_only:
            return {"x": x, "padding_mask": padding_mask, "features": features, "layer_results": layer_results}
        if target_list is None:
            raise ValueError("the HuBERT pretraining forward needs target_list (the frame labels)")
        logit_m_list, logit_u_list = self._label_logits(x, target_list, padding_mask, mask_indices)
        return {"logit_m_list": logit_m_list, "logit_u_list": logit_u_list, "padding_mask": padding_mask,
                "features_pen": features_pen}

    def _label_logits(self, x: torch.Tensor, target_list: List[torch.Tensor], padding_mask: Optional[torch.Tensor],
                      mask_indices: Optional[torch.Tensor]) -> Tuple[List[Any], List[Any]]:
        """Per label set, the logits of the masked and of the unmasked unpadded frames."""
        if self.label_embs_concat is None:
            raise ValueError("this HuBERT model has no label embeddings (built for fine-tuning): build it with a "
                             "hubert_pretraining task that has dictionaries")
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if padding_mask is None else ~padding_mask
        masked = valid & mask_indices if mask_indices is not None else torch.zeros_like(valid)
        label_embs = self.label_embs_concat.split(self.num_classes, 0)
        if self.target_glu is not None:
            label_embs = [self.target_glu(embs) for embs in label_embs]
        results = []
        for skip, frames in ((self.skip_masked, masked), (self.skip_nomask, valid & ~masked)):
            if skip:
                results.append([None for _ in target_list])
                continue
            projected = self.final_proj(x[frames])
            per_set = projected.chunk(len(target_list), dim=-1) if self.untie_final_proj else [projected] * len(target_list)
            results.append([label_logits(p, t[frames], embs, self.logit_temp)
                            for p, t, embs in zip(per_set, target_list, label_embs)])
        return results[0], results[1]

    # -- criterion interface ------------------------------------------------------------------------

    def get_logits(self, net_output: Dict[str, Any], is_masked: bool = True) -> List[torch.Tensor]:
        """The masked (or unmasked) frames' logits per label set, in fp32; skipped sets left out."""
        logits = net_output["logit_m_list" if is_masked else "logit_u_list"]
        return [x.float() for x in logits if x is not None]

    def get_targets(self, net_output: Dict[str, Any], is_masked: bool = True) -> List[torch.Tensor]:
        """Column 0 (the true class) for every row of ``get_logits``."""
        return [x.new_zeros(x.size(0), dtype=torch.long) for x in self.get_logits(net_output, is_masked)]

    def get_extra_losses(self, net_output: Dict[str, Any]) -> Tuple[List[torch.Tensor], List[str]]:
        """([features_pen], ["features_pen"]), fairseq's names for ``criterion.loss_weights``."""
        if "features_pen" in net_output:
            return [net_output["features_pen"]], ["features_pen"]
        return [], []

    # -- feature extraction / fine-tuning ------------------------------------------------------------

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                         mask: bool = False, ret_conv: bool = False, output_layer: Optional[int] = None
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(x B×T×D after ``output_layer`` (1-based; the last by default), or the encoder input with
        ``ret_conv``; the frame padding mask), as fairseq's HuBERT ``extract_features``."""
        res = self.forward(source, padding_mask=padding_mask, mask=mask, features_only=True,
                           output_layer=output_layer)
        return (res["features"] if ret_conv else res["x"]), res["padding_mask"]

    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        """Drop ``target_glu`` and ``final_proj`` for fine-tuning (fairseq keeps ``label_embs_concat``, so do we:
        fine-tuned files keep the key), optionally keeping layers up to ``last_layer``."""
        self.target_glu = None
        self.final_proj = None
        if last_layer is not None:
            self.encoder.layers = nn.ModuleList(l for i, l in enumerate(self.encoder.layers) if i <= last_layer)
