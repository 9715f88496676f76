"""Config values that used to fail deep in data loading or model building are ConfigErrors naming the key as
soon as the config is read (issue 14)."""

import pytest

from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.errors import ConfigError

TINY = {"_name": "wav2vec2", "encoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
        "encoder_attention_heads": 4, "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 2"}


def _finalize(model=None, task=None, **groups):
    return finalize_config({"task": {"_name": "audio_pretraining", "data": "/x", **(task or {})},
                            "model": {**TINY, **(model or {})}, **groups})


def _message(**kwargs):
    with pytest.raises(ConfigError) as exc:
        _finalize(**kwargs)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_valid_values_pass_and_the_receptive_field_is_the_bound():
    _finalize()
    # (10 - 1) + (3 - 1) * 5 + (3 - 1) * 10 + 1 = 40 samples give exactly one frame
    assert _finalize(task={"max_sample_size": 40}).task.max_sample_size == 40
    finalize_config({"model": {"_name": "wav2vec2"}, "task": {"_name": "audio_pretraining", "data": "/x",
                                                              "max_sample_size": 400}})


def test_negative_num_workers():
    assert _message(dataset={"num_workers": -1}) == (
        "dataset.num_workers=-1 must be 0 (load data in the training process) or a positive number of DataLoader "
        "worker processes")


def test_heads_that_do_not_divide_the_embedding():
    assert _message(model={"encoder_attention_heads": 5}) == (
        "model.encoder_attention_heads=5 does not divide model.encoder_embed_dim=32: choose a number of heads that "
        "does (e.g. 4)")
    assert _message(model={"encoder_attention_heads": 0}).startswith("model.encoder_attention_heads=0 does not divide")


@pytest.mark.parametrize("spec", ["[(16, 10)]", "[(16, 10, 0)]", "[]", "[(16, 10, 5)", "[(16, 10.5, 5)]", "16"])
def test_malformed_conv_feature_layers(spec):
    assert _message(model={"conv_feature_layers": spec}).startswith("model.conv_feature_layers")


def test_max_sample_size_below_the_receptive_field():
    assert _message(task={"max_sample_size": 39}) == (
        "task.max_sample_size=39 is below the receptive field of model.conv_feature_layers (40 samples), so every "
        "cropped clip would give zero frames: raise task.max_sample_size")
