"""Base class of models (fairseq's ``BaseFairseqModel``)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn


class BaseFairseqModel(nn.Module):
    """An ``nn.Module`` built from a config dataclass, with fairseq's model hooks."""

    @classmethod
    def build_model(cls, cfg: Any, task: Any = None) -> "BaseFairseqModel":
        return cls(cfg)

    def set_num_updates(self, num_updates: int) -> None:
        """Tell every submodule the update count (gumbel temperature, freeze_finetune_updates ...)."""
        for module in self.modules():
            if module is not self and hasattr(module, "set_num_updates"):
                module.set_num_updates(num_updates)

    def get_targets(self, sample: Dict[str, Any], net_output: Any) -> torch.Tensor:
        return sample["target"]

    def get_normalized_probs(self, net_output: Any, log_probs: bool, sample: Optional[Dict] = None) -> torch.Tensor:
        logits = net_output["encoder_out"] if isinstance(net_output, dict) else net_output
        logits = logits.float()
        return torch.log_softmax(logits, dim=-1) if log_probs else torch.softmax(logits, dim=-1)

    def upgrade_state_dict_named(self, state_dict: Dict[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
        """Rename or reshape keys of an older checkpoint in place; the default changes nothing."""
        for child_name, child in self.named_children():
            if hasattr(child, "upgrade_state_dict_named"):
                prefix = f"{name}.{child_name}" if name else child_name
                child.upgrade_state_dict_named(state_dict, prefix)
        return state_dict

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, model_cfg: Any = None):
        """Load weights after running the ``upgrade_state_dict_named`` hooks (fairseq's order)."""
        state_dict = dict(state_dict)
        self.upgrade_state_dict_named(state_dict, "")
        return super().load_state_dict(state_dict, strict=strict)
