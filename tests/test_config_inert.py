"""The config fields kept only so fairseq's yamls load: one table of them, and a warning when one is set."""

import dataclasses
import glob
import logging
import os
import re

from fairseq_lite.dataclass.configs import TYPED_GROUPS, FairseqConfig
from fairseq_lite.dataclass.inert import inert_keys
from fairseq_lite.dataclass.initialize import compose_config, finalize_config

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fairseq_lite")
CONFIG_DIR = os.path.join(os.path.dirname(PACKAGE), "config", "pretraining")


def _unread_fields():
    """``group.field`` of the typed groups that no code outside configs.py names (as ``.field`` or a string)."""
    code = "\n".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)
                     if not p.endswith(os.path.join("dataclass", "configs.py")) and not p.endswith("inert.py"))
    groups = {f.name: f.default_factory for f in dataclasses.fields(FairseqConfig)}
    return sorted(f"{group}.{f.name}" for group in TYPED_GROUPS for f in dataclasses.fields(groups[group])
                  if not f.name.startswith("_") and not re.search(r"[.'\"]" + re.escape(f.name) + r"\b", code))


def test_the_table_lists_exactly_the_fields_nothing_reads():
    assert sorted(inert_keys()) == _unread_fields()
    assert len(set(inert_keys())) == len(inert_keys())


def test_setting_an_inert_field_warns_once_naming_it(caplog):
    overrides = ["task.data=/tmp", "common.user_dir=/my/plugins", "generation.lenpen=2.0", "common.seed=3"]
    with caplog.at_level(logging.WARNING):
        finalize_config(compose_config(CONFIG_DIR, "wav2vec2_base_librispeech", overrides))
    warnings = [r.getMessage() for r in caplog.records if "do nothing in fairseq_lite" in r.getMessage()]
    assert len(warnings) == 1
    assert "common.user_dir='/my/plugins'" in warnings[0] and "generation.lenpen=2.0" in warnings[0]
    assert "common.seed" not in warnings[0]


def test_fairseqs_own_recipes_at_their_defaults_do_not_warn(caplog):
    with caplog.at_level(logging.WARNING):
        finalize_config(compose_config(CONFIG_DIR, "wav2vec2_base_librispeech", ["task.data=/tmp"]))
    assert not [r for r in caplog.records if "do nothing in fairseq_lite" in r.getMessage()]
