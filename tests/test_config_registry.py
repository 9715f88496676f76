"""Registry rules: registration, building from every config form, unknown keys, checkpoint leniency."""

import argparse
import logging
import uuid
from dataclasses import dataclass, field
from typing import List

import pytest
from omegaconf import OmegaConf

from fairseq_lite.dataclass import FairseqDataclass, II
from fairseq_lite.errors import ConfigError
from fairseq_lite.registry import Registry


@dataclass
class ToyConfig(FairseqDataclass):
    dropout: float = 0.1
    layers: int = 2
    betas: str = "(0.9,0.98)"
    widths: List[int] = field(default_factory=lambda: [4, 8])


class Toy:
    def __init__(self, cfg, extra=None):
        self.cfg = cfg
        self.extra = extra


def make_registry():
    registry = Registry(f"toy_{uuid.uuid4().hex[:8]}")
    registry.register("toy", dataclass=ToyConfig)(Toy)
    return registry


def test_build_from_string_uses_defaults():
    built = make_registry().build("toy")
    assert isinstance(built, Toy)
    assert isinstance(built.cfg, ToyConfig)
    assert built.cfg == ToyConfig(_name="toy")


@pytest.mark.parametrize(
    "cfg",
    [
        {"_name": "toy", "layers": 5},
        OmegaConf.create({"_name": "toy", "layers": 5}),
        ToyConfig(_name="toy", layers=5),
    ],
    ids=["dict", "DictConfig", "dataclass"],
)
def test_build_merges_user_values_over_defaults(cfg):
    built = make_registry().build(cfg, "extra-arg")
    assert built.cfg.layers == 5
    assert built.cfg.dropout == 0.1 and built.cfg.widths == [4, 8]
    assert built.cfg._name == "toy"
    assert built.extra == "extra-arg"


def test_values_are_converted_to_the_field_type():
    built = make_registry().build({"_name": "toy", "dropout": "0.25", "layers": "3"})
    assert built.cfg.dropout == 0.25 and built.cfg.layers == 3


def test_build_from_legacy_namespace_copies_same_named_attributes():
    registry = make_registry()
    ns = argparse.Namespace(**{registry.kind: "toy"}, layers=7, unrelated="x")
    assert registry.build(ns).cfg.layers == 7


def test_duplicate_names_and_class_names_are_rejected():
    registry = make_registry()
    with pytest.raises(ValueError, match="duplicate"):
        registry.register("toy", dataclass=ToyConfig)(type("Other", (), {}))
    with pytest.raises(ValueError, match="duplicate class name"):
        registry.register("toy2", dataclass=ToyConfig)(Toy)


def test_unknown_key_lists_valid_keys_and_closest_match():
    with pytest.raises(ConfigError) as err:
        make_registry().build({"_name": "toy", "dropuot": 0.3})
    message = str(err.value)
    assert "dropuot" in message and "did you mean 'dropout'" in message
    assert "valid keys are: betas, dropout, layers, widths" in message


def test_unknown_key_from_checkpoint_is_dropped_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        built = make_registry().build({"_name": "toy", "old_key": 1, "older": 2, "layers": 4}, from_checkpoint=True)
    assert built.cfg.layers == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "old_key" in warnings[0].getMessage() and "older" in warnings[0].getMessage()


def test_unknown_name_suggests_closest():
    registry = make_registry()
    with pytest.raises(ConfigError, match="unknown .* 'tyo': did you mean 'toy'"):
        registry.build("tyo")


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match="layers"):
        make_registry().build({"_name": "toy", "layers": "many"})


def test_interpolation_default_resolves_inside_a_root():
    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.tasks import TASK_REGISTRY

    @dataclass
    class InterpTaskConfig(FairseqDataclass):
        seed: int = II("common.seed")

    name = f"interp_task_{uuid.uuid4().hex[:6]}"
    TASK_REGISTRY.register(name, dataclass=InterpTaskConfig)(type(name, (TASK_REGISTRY.base_class,), {}))
    cfg = finalize_config({"common": {"seed": 17}, "task": {"_name": name}})
    assert cfg.task.seed == 17


def test_component_built_alone_resolves_interpolations_from_fairseq_defaults():
    from fairseq_lite.tasks import TASK_REGISTRY

    @dataclass
    class AloneTaskConfig(FairseqDataclass):
        seed: int = II("common.seed")
        tpu: bool = II("common.tpu")

    name = f"alone_task_{uuid.uuid4().hex[:6]}"
    TASK_REGISTRY.register(name, dataclass=AloneTaskConfig)(type(name, (TASK_REGISTRY.base_class,), {}))
    config = TASK_REGISTRY.build_config({"_name": name})
    assert config.seed == 1 and config.tpu is False


@dataclass
class WideToyConfig(ToyConfig):
    layers: int = 12


def test_architecture_builds_the_same_class_with_its_defaults():
    registry = make_registry()
    registry.register_architecture("toy_wide", "toy", WideToyConfig)
    built = registry.build({"_name": "toy_wide", "dropout": 0.3})
    assert isinstance(built, Toy) and (built.cfg.layers, built.cfg.dropout) == (12, 0.3)
    assert registry.build("toy").cfg.layers == 2
    with pytest.raises(ValueError, match="duplicate"):
        registry.register_architecture("toy_wide", "toy", WideToyConfig)
    with pytest.raises(ValueError, match="unregistered"):
        registry.register_architecture("other_wide", "other", WideToyConfig)
    with pytest.raises(ValueError, match="must extend"):
        registry.register_architecture("toy_plain", "toy", FairseqDataclass)
