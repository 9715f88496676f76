"""XLSR-53 / XLS-R / MMS: the ``+model=wav2vec2/<preset>`` presets, fairseq's XLS-R ``finetune.yaml`` and its README.

- the presets compose on top of a pretraining yaml from any --config-dir (they ship in the package);
- built on the meta device, XLS-R 300M / 1B / 2B and MMS-1B have the parameter count and the key/shape set of HF's
  ``Wav2Vec2ForPreTraining`` and ``Wav2Vec2Model`` for the published configs (pre-LN, layer-norm CNN with bias);
- examples/wav2vec/xlsr/config/finetune.yaml is fairseq HEAD's file byte for byte (its git blob id) and loads with
  the README's command; ``max_update: ???`` left unset is one line quoting the README's values per benchmark;
- ``model.activation_checkpoint`` (the README's spelling) sets ``checkpoint_activations``;
- a checkpoint with ``args: None`` and the config in ``cfg`` (xlsr_53_56k.pt's layout; genuine fairseq 0.12.2 writes
  it so) loads and computes what fairseq recorded, and fine-tunes 2 updates through finetune.yaml.
"""

import hashlib
import logging
import os

import pytest
import torch
import transformers

from fairseq_lite.cli import hydra_train
from fairseq_lite.cli.common import run_cli
from fairseq_lite.data.labels import write_label_files
from fairseq_lite.data.manifest import write_manifest
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.interop.huggingface import wav2vec2_to_hf_state_dict
from fairseq_lite.models import build_model
from genuine_fixtures import FIXTURES, assert_close, fixture, load
from test_ctc_finetune_demo import CORPUS, shortest_utterances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINING = os.path.join(REPO, "config", "pretraining")
XLSR_CONFIG = os.path.join(REPO, "examples", "wav2vec", "xlsr", "config")
#: git's blob id of examples/wav2vec/xlsr/config/finetune.yaml in facebookresearch/fairseq at HEAD (3d262bb)
FAIRSEQ_FINETUNE_BLOB = "8736e101c5047f74ee24c6198f0f9523c9e9eef6"

#: (layers, hidden, FFN, final_dim) of each preset: variants.md §1-2 and HF's published configs
#: (facebook/wav2vec2-xls-r-*, facebook/mms-*: codevector_dim = proj_codevector_dim = final_dim).
PRESETS = {
    "xlsr_53": (24, 1024, 4096, 768),
    "xls_r_300m": (24, 1024, 4096, 768),
    "xls_r_1b": (48, 1280, 5120, 1024),
    "xls_r_2b": (48, 1920, 7680, 1024),
    "mms_300m": (24, 1024, 4096, 768),
    "mms_1b": (48, 1280, 5120, 1024),
}
HEADS = ("quantizer.", "project_q.", "final_proj.")


def preset_config(preset, *overrides, config_dir=PRETRAINING, config_name="wav2vec2_large_librivox"):
    return finalize_config(compose_config(config_dir, config_name, ["task.data=/data", f"+model=wav2vec2/{preset}",
                                                                   *overrides]))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_composes_on_a_pretraining_yaml(preset):
    layers, dim, ffn, final_dim = PRESETS[preset]
    model = preset_config(preset).model
    assert (model._name, model.encoder_layers, model.encoder_embed_dim, model.encoder_ffn_embed_dim) == (
        "wav2vec2", layers, dim, ffn)
    assert (model.encoder_attention_heads, model.final_dim, model.latent_groups, model.latent_vars) == (
        16, final_dim, 2, 320)
    assert str(model.extractor_mode) == "layer_norm" and model.layer_norm_first and model.conv_bias
    assert model.quantize_targets and list(model.latent_temp) == [2.0, 0.1, 0.999995]
    assert preset_config(preset, "model.encoder_layers=2").model.encoder_layers == 2  # overrides come last


def test_presets_are_found_from_any_config_dir(tmp_path):
    (tmp_path / "mine.yaml").write_text("task:\n  _name: audio_pretraining\n  normalize: true\n"
                                        "criterion:\n  _name: wav2vec\n  infonce: true\n")
    cfg = preset_config("xls_r_2b", config_dir=str(tmp_path), config_name="mine")
    assert (cfg.model.encoder_embed_dim, cfg.task.normalize) == (1920, True)


def hf_config(layers, dim, ffn, final_dim):
    """HF's config for the published XLS-R / MMS checkpoints, written from HF's names (not derived from ours)."""
    return transformers.Wav2Vec2Config(
        hidden_size=dim, num_hidden_layers=layers, intermediate_size=ffn, num_attention_heads=16,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_codevector_groups=2,
        num_codevectors_per_group=320, codevector_dim=final_dim, proj_codevector_dim=final_dim)


def shapes(state_dict):
    return {key: tuple(value.shape) for key, value in state_dict.items()}


@pytest.mark.parametrize("preset, billions", [("xls_r_300m", 0.317), ("xls_r_1b", 0.965), ("xls_r_2b", 2.163),
                                              ("mms_1b", 0.965)])
def test_meta_build_equals_hf_keys_shapes_and_parameter_count(preset, billions):
    with torch.device("meta"):
        ours = build_model(preset_config(preset).model)
        hf_pretraining = transformers.Wav2Vec2ForPreTraining(hf_config(*PRESETS[preset]))
        hf_backbone = transformers.Wav2Vec2Model(hf_config(*PRESETS[preset]))
    assert next(ours.parameters()).is_meta
    state = ours.state_dict()
    assert shapes(wav2vec2_to_hf_state_dict(state)) == shapes(hf_pretraining.state_dict())
    backbone = {k: v for k, v in state.items() if not k.startswith(HEADS)}
    assert shapes(wav2vec2_to_hf_state_dict(backbone, hf_prefix="")) == shapes(hf_backbone.state_dict())
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in hf_pretraining.parameters())
    assert sum(v.numel() for v in backbone.values()) == sum(p.numel() for p in hf_backbone.parameters())
    assert abs(count / 1e9 - billions) < 0.001


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_finetune_yaml_is_fairseqs_file_and_loads_with_the_readme_command():
    with open(os.path.join(XLSR_CONFIG, "finetune.yaml"), "rb") as f:
        assert git_blob_id(f.read()) == FAIRSEQ_FINETUNE_BLOB
    cfg = finalize_config(compose_config(XLSR_CONFIG, "finetune", [
        "distributed_training.distributed_port=12345", "task.data=/data", "model.w2v_path=xlsr2_300m.pt",
        "optimization.max_update=13000"]))
    assert (cfg.task._name, cfg.task.normalize, cfg.task.labels, cfg.model._name) == (
        "audio_finetuning", True, "ltr", "wav2vec_ctc")
    assert (cfg.dataset.max_tokens, cfg.optimization.update_freq, cfg.optimization.lr) == (1280000, [5], [0.0003])
    assert (cfg.lr_scheduler._name, list(cfg.lr_scheduler.phase_ratio)) == ("tri_stage", [0.1, 0.4, 0.5])
    assert (cfg.model.mask_prob, cfg.model.mask_channel_prob, cfg.model.mask_channel_length) == (0.75, 0.25, 64)
    assert (cfg.model.freeze_finetune_updates, cfg.model.checkpoint_activations) == (10000, False)
    assert cfg.optimization.max_update == 13000


def test_unset_max_update_is_one_line_with_the_readmes_values(capsys):
    argv = ["task.data=/data", "model.w2v_path=xlsr2_300m.pt", "--config-dir", XLSR_CONFIG, "--config-name", "finetune"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(hydra_train.main, argv)  # what the fairseq-hydra-train console script runs
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    for value in ("optimization.max_update", "finetune.yaml", "Babel 26000", "Common Voice 13000",
                  "VoxPopuli 50000", "MLS 10h 20000"):
        assert value in lines[0]


def test_unset_max_update_elsewhere_names_the_key_without_xlsr_values(tmp_path):
    (tmp_path / "ft.yaml").write_text(open(os.path.join(XLSR_CONFIG, "finetune.yaml")).read())
    argv = ["task.data=/data", "model.w2v_path=x.pt", "--config-dir", str(tmp_path), "--config-name", "ft"]
    with pytest.raises(ConfigError, match=r"optimization\.max_update is \?\?\? in .*ft\.yaml") as error:
        hydra_train.main(argv)
    assert "Babel" not in str(error.value)


def test_activation_checkpoint_is_checkpoint_activations(tmp_path, caplog):
    base = ["task.data=/data", "model.w2v_path=x.pt", "optimization.max_update=1"]
    for override in ("model.activation_checkpoint=true", "+model.activation_checkpoint=true"):
        cfg = finalize_config(compose_config(XLSR_CONFIG, "finetune", base + [override]))
        assert cfg.model.checkpoint_activations is True  # over the yaml's checkpoint_activations: false
    assert preset_config("xls_r_2b", "model.activation_checkpoint=true").model.checkpoint_activations is True
    yaml = open(os.path.join(XLSR_CONFIG, "finetune.yaml")).read()
    (tmp_path / "alias.yaml").write_text(yaml.replace("checkpoint_activations: false", "activation_checkpoint: true"))
    assert finalize_config(compose_config(str(tmp_path), "alias", base)).model.checkpoint_activations is True
    (tmp_path / "both.yaml").write_text(yaml + "  activation_checkpoint: true\n")
    with caplog.at_level(logging.WARNING):
        cfg = finalize_config(compose_config(str(tmp_path), "both", base))
    assert cfg.model.checkpoint_activations is False
    assert "ignoring model.activation_checkpoint=True" in caplog.text


def xlsr_layout_file(tmp_path):
    """Genuine fairseq 0.12.2's pre-LN pretraining file (wav2vec2_large_librivox, 2L/32d), stored as xlsr_53_56k.pt
    is: ``args`` None, the whole config in ``cfg``."""
    state = torch.load(os.path.join(FIXTURES, "w2v2_large_pretrain", "checkpoint.pt"), weights_only=False)
    state["args"] = None
    assert isinstance(state["cfg"], dict) and state["cfg"]["model"]["layer_norm_first"]
    path = tmp_path / "xlsr_layout.pt"
    torch.save(state, path)
    return path


def test_args_none_checkpoint_loads_and_matches_fairseq(tmp_path):
    folder, inputs, expected, _ = fixture("w2v2_large_pretrain")
    path = xlsr_layout_file(tmp_path)
    assert load_checkpoint_to_cpu(str(path))["cfg"]["model"]["_name"] == "wav2vec2"
    os.makedirs(tmp_path / "copy")
    os.replace(path, tmp_path / "copy" / "checkpoint.pt")
    model, cfg, _ = load(str(tmp_path / "copy"))
    assert cfg.model.layer_norm_first and str(cfg.model.extractor_mode) == "layer_norm"
    with torch.no_grad():
        result = model.extract_features(inputs["source"], inputs["padding_mask"])
    assert_close(result["x"], expected["x"], "x")


def demo_data(data, count=4):
    """The ``count`` shortest demo-corpus utterances as train and valid manifests with ltr labels."""
    utterances = shortest_utterances(count)
    root = os.path.join(CORPUS, "train")
    for split in ("train", "valid"):
        write_manifest(str(data / f"{split}.tsv"), root, [(os.path.relpath(f, root), n) for f, n, _ in utterances])
        write_label_files([text for _, _, text in utterances], str(data), split)
    (data / "dict.ltr.txt").write_text(open(os.path.join(CORPUS, "dict.ltr.txt")).read())


def test_two_update_finetune_through_finetune_yaml(tmp_path):
    """The README's command on the xlsr-layout file, with only what a tiny CPU run needs changed."""
    data = tmp_path / "data"
    data.mkdir()
    demo_data(data)
    pretrained = xlsr_layout_file(tmp_path)
    save_dir = tmp_path / "ft"
    hydra_train.main([
        f"task.data={data}", f"model.w2v_path={pretrained}", "--config-dir", XLSR_CONFIG, "--config-name", "finetune",
        "optimization.max_update=2", "common.cpu=true", "common.fp16=false", "common.log_format=none",
        "common.tensorboard_logdir=null", "distributed_training.distributed_world_size=1", "dataset.num_workers=0",
        "dataset.max_tokens=400000", "model.mask_channel_length=8", "model.freeze_finetune_updates=1",
        f"checkpoint.save_dir={save_dir}"])
    state = load_checkpoint_to_cpu(str(save_dir / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 2
    cfg = state["cfg"]
    assert (cfg["model"]["mask_prob"], cfg["optimization"]["update_freq"], cfg["lr_scheduler"]["_name"]) == (
        0.75, [5], "tri_stage")
    assert cfg["model"]["w2v_args"]["model"]["layer_norm_first"] is True
    before = torch.load(pretrained, weights_only=False)["model"]
    after = state["model"]
    assert not torch.equal(after["w2v_encoder.proj.weight"], torch.zeros_like(after["w2v_encoder.proj.weight"]))
    # update 1 trains only proj (freeze_finetune_updates=1), update 2 the encoder too; feature_grad_mult 0.0
    # keeps the CNN where it was
    changed = {k for k, v in before.items() if f"w2v_encoder.w2v_model.{k}" in after
               and not torch.equal(v, after[f"w2v_encoder.w2v_model.{k}"])}
    assert any(k.startswith("encoder.layers.") for k in changed)
    assert not any(k.startswith("feature_extractor.") for k in changed)
