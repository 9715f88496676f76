"""Keep a checkpoint's ``cfg`` to what genuine fairseq 0.12.2 accepts, so fairseq can read our files.

fairseq merges a checkpoint's ``cfg`` groups into its own dataclasses and stops at any key they lack
(``Key 'multi_corpus_keys' not in 'AudioPretrainingConfig'``). fairseq_lite's configs carry more: fields of
fairseq HEAD and our own (``strict_sample_rate``, ``augment_*``, ``common.compile`` ...). On save,
:func:`split_for_fairseq` moves every key that fairseq 0.12.2 does not know into
``extra_state["fairseq_lite"]["cfg"]`` (fairseq never looks there); on load, :func:`restore_fairseq_lite_keys`
puts them back, so a fairseq_lite checkpoint round-trips unchanged.

``fairseq_0_12_2_schema.json`` beside this file lists fairseq 0.12.2's keys: each top-level group, and for each
component fairseq_lite registers, the fields of fairseq's dataclass (nested dataclasses as objects). It is
written by ``scripts/fairseq_fixtures/schema.py`` in the genuine-fairseq venv. Components that fairseq 0.12.2
lacks altogether are left as they are: fairseq cannot build them whatever their keys.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, Optional, Tuple

SCHEMA_FILE = os.path.join(os.path.dirname(__file__), "fairseq_0_12_2_schema.json")

#: Where the moved keys live in a checkpoint: ``extra_state[EXTRA_STATE_KEY]["cfg"]``.
EXTRA_STATE_KEY = "fairseq_lite"

#: Config groups whose value selects a registered component by ``_name``.
COMPONENT_GROUPS = ("task", "model", "criterion", "optimizer", "lr_scheduler")


@functools.lru_cache(maxsize=1)
def fairseq_schema() -> Dict[str, Any]:
    """fairseq 0.12.2's keys, as written by ``scripts/fairseq_fixtures/schema.py``."""
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        return json.load(f)


def _split_fields(values: Dict[str, Any], fields: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(``values`` restricted to ``fields``, the rest), descending into nested dataclass fields."""
    kept, moved = {}, {}
    for key, value in values.items():
        if key not in fields:
            moved[key] = value
        elif isinstance(fields[key], dict) and isinstance(value, dict):
            kept[key], inner = _split_fields(value, fields[key])
            if inner:
                moved[key] = inner
        else:
            kept[key] = value
    return kept, moved


def _component_fields(group: str, value: Any) -> Optional[Dict[str, Any]]:
    """fairseq 0.12.2's fields for the component ``value`` selects; None when fairseq lacks that component."""
    name = value.get("_name") if isinstance(value, dict) else None
    return fairseq_schema()["components"].get(group, {}).get(name)


def split_for_fairseq(cfg: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(``cfg`` holding only keys fairseq 0.12.2 accepts, the removed keys as a nested dict of the same shape).

    A fine-tuned model's stored pretraining config (``model.w2v_args``) is split the same way, since fairseq
    builds the pretrained model from it.
    """
    groups = fairseq_schema()["groups"]
    kept, moved = {}, {}
    for group, value in cfg.items():
        if group not in groups and group not in COMPONENT_GROUPS:
            moved[group] = value  # a group fairseq 0.12.2 lacks
            continue
        fields = _component_fields(group, value) if group in COMPONENT_GROUPS else groups[group]
        if not isinstance(value, dict) or not fields:
            kept[group] = value
            continue
        kept[group], inner = _split_fields(value, fields)
        if isinstance(value.get("w2v_args"), dict):
            kept[group]["w2v_args"], w2v_moved = split_for_fairseq(value["w2v_args"])
            if w2v_moved:
                inner["w2v_args"] = w2v_moved
        if inner:
            moved[group] = inner
    return kept, moved


def make_fairseq_readable(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` (a checkpoint dict) with ``cfg`` split for fairseq and the rest under ``extra_state``."""
    if not isinstance(state.get("cfg"), dict):
        return state
    kept, moved = split_for_fairseq(state["cfg"])
    extra = dict(state.get("extra_state") or {})
    if moved:
        extra[EXTRA_STATE_KEY] = {**extra.get(EXTRA_STATE_KEY, {}), "cfg": moved}
    return {**state, "cfg": kept, "extra_state": extra}


def _merge_into(target: Dict[str, Any], extra: Dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def restore_fairseq_lite_keys(state: Dict[str, Any]) -> None:
    """Put the keys :func:`make_fairseq_readable` moved back into ``state["cfg"]``, in place."""
    extra = (state.get("extra_state") or {}).get(EXTRA_STATE_KEY) or {}
    if isinstance(extra.get("cfg"), dict) and isinstance(state.get("cfg"), dict):
        _merge_into(state["cfg"], extra["cfg"])
