"""Write the config schema of genuine fairseq 0.12.2 (which keys its dataclasses accept) as JSON.

Run with the genuine-fairseq venv only (never imported by fairseq_lite)::

    ~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python scripts/fairseq_fixtures/schema.py

It writes ``fairseq_lite/interop/fairseq_0_12_2_schema.json``: for every top-level group of fairseq's
``FairseqConfig`` and for every task, model (architecture), criterion, optimizer and LR scheduler that
fairseq_lite registers too, the field names of fairseq's dataclass, nested dataclass fields as objects.
fairseq_lite keeps a checkpoint's ``cfg`` to these keys so that fairseq 0.12.2 can read its files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "fairseq_lite", "interop", "fairseq_0_12_2_schema.json")

#: The names fairseq_lite registers (the JSON holds only these components).
COMPONENTS = {
    "task": ["audio_pretraining", "audio_finetuning", "language_modeling", "hubert_pretraining"],
    "model": ["wav2vec", "wav2vec2", "wav2vec_ctc", "hubert", "hubert_ctc", "transformer_lm", "transformer_lm_big", "transformer_lm_gbw",
              "transformer_lm_baevski_gbw", "transformer_lm_wiki103", "transformer_lm_baevski_wiki103",
              "transformer_lm_gpt", "transformer_lm_gpt2_small", "transformer_lm_gpt2_medium",
              "transformer_lm_gpt2_big"],
    "criterion": ["wav2vec", "ctc", "cross_entropy", "hubert"],
    "optimizer": ["adam"],
    "lr_scheduler": ["fixed", "polynomial_decay", "tri_stage", "cosine"],
}


def describe(dc_cls: type) -> dict:
    """``{field: None}`` for plain fields, ``{field: {...}}`` for fields typed by a nested dataclass."""
    hints = typing.get_type_hints(dc_cls)
    out = {}
    for f in dataclasses.fields(dc_cls):
        tp = hints.get(f.name)
        if typing.get_origin(tp) is typing.Union:
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), None)
        nested = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        out[f.name] = describe(tp) if nested else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=DEFAULT_OUT)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import fairseq
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_DATACLASS_REGISTRY
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    registries = {
        "task": TASK_DATACLASS_REGISTRY,
        "model": {arch: MODEL_DATACLASS_REGISTRY[model] for arch, model in ARCH_MODEL_NAME_REGISTRY.items()
                  if model in MODEL_DATACLASS_REGISTRY},
        "criterion": CRITERION_DATACLASS_REGISTRY,
        "optimizer": OPTIMIZER_DATACLASS_REGISTRY,
        "lr_scheduler": LR_SCHEDULER_DATACLASS_REGISTRY,
    }
    root = describe(FairseqConfig)
    schema = {
        "fairseq_version": fairseq.__version__,
        "groups": {name: fields for name, fields in root.items() if name not in COMPONENTS},
        "components": {group: {name: describe(registries[group][name]) for name in names if name in registries[group]}
                       for group, names in COMPONENTS.items()},
    }
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(schema, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
