"""MMS language adapters (``layer_type: trf_adp``, fairseq HEAD's ``AdapterFast``): a genuine-layout fairseq file
with HEAD's adapter keys loads and reproduces genuine fairseq's emissions where its adapters add nothing; the
batch's ``corpus_key`` picks one language; adapter fine-tuning from a model without adapters initialises them
with one warning and trains only the adapters and the output projection."""

import logging
import os
import runpy

import pytest
import torch

import fairseq_lite  # noqa: F401
from fairseq_lite import checkpoint_utils
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.errors import CheckpointError, ConfigError, DataError
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.models import build_model
from fairseq_lite.models.wav2vec.wav2vec2_asr import ADAPTERS_ONLY_FREEZE_REGEX
from fairseq_lite.tasks import setup_task
from fairseq_lite.training.trainer import Trainer
from genuine_fixtures import FIXTURES, assert_close, fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTER_KEYS = ("W_a", "W_b", "b_a", "b_b", "ln_W", "ln_b")
NUM, DIM = 3, 4  # adp_num, adp_dim
TINY = dict(_name="wav2vec2", encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
            encoder_attention_heads=4, conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 2", conv_pos=16,
            conv_pos_groups=4, layer_norm_first=True, extractor_mode="layer_norm", conv_bias=True, dropout=0.0,
            attention_dropout=0.0, layer_type="trf_adp", adp_num=NUM, adp_dim=DIM)


def head_adapter_tensors(embed_dim, generator, zero_output=False):
    """One layer's adapter tensors with fairseq HEAD's names and shapes (W_a N×D×E, W_b N×E×D ...)."""
    shapes = {"W_a": (NUM, DIM, embed_dim), "W_b": (NUM, embed_dim, DIM), "b_a": (NUM, DIM), "b_b": (NUM, embed_dim),
              "ln_W": (NUM, embed_dim), "ln_b": (NUM, embed_dim)}
    tensors = {k: torch.randn(shape, generator=generator) * 0.5 for k, shape in shapes.items()}
    if zero_output:
        tensors["W_b"].zero_()
        tensors["b_b"].zero_()
    return tensors


def genuine_file_with_adapters(tmp_path, live_row=None, langs=None, **adapter_options):
    """The genuine fairseq 0.12.2 vox_10h CTC file (2L/32d, pre-LN) made an MMS one with HEAD's names: cfg
    layer_type trf_adp + adp_* in the model config and its w2v_args, and ``...layers.{i}.adapter_layer.*``
    weights whose output is zero except for row ``live_row`` (every row with ``live_row="all"``); ``langs``
    become task.multi_corpus_keys."""
    state = load_checkpoint_to_cpu(os.path.join(FIXTURES, "w2v2_ctc_vox_10h", "checkpoint.pt"))
    adapter_cfg = dict(layer_type="trf_adp", adp_num=NUM, adp_dim=DIM, adp_act_fn="relu", adp_trf_idx="all",
                       **adapter_options)
    if langs:
        state["cfg"]["task"]["multi_corpus_keys"] = ",".join(langs)
    state["cfg"]["model"].update(adapter_cfg)
    w2v_model = state["cfg"]["model"]["w2v_args"]["model"]
    w2v_model.update(adapter_cfg)
    generator = torch.Generator().manual_seed(0)
    for i in range(w2v_model["encoder_layers"]):
        tensors = head_adapter_tensors(w2v_model["encoder_embed_dim"], generator, zero_output=live_row != "all")
        if live_row not in (None, "all"):
            tensors["W_b"][live_row].normal_(generator=generator)
        for name, value in tensors.items():
            state["model"][f"w2v_encoder.w2v_model.encoder.layers.{i}.adapter_layer.{name}"] = value
    path = tmp_path / "mms_ctc.pt"
    torch.save(state, path)
    return path


def test_genuine_layout_file_with_adapter_keys_loads_and_matches_fairseq_where_adapters_add_nothing(tmp_path, caplog):
    _, inputs, expected, _ = fixture("w2v2_ctc_vox_10h")
    path = genuine_file_with_adapters(tmp_path, live_row=1)
    with caplog.at_level(logging.WARNING):
        models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    assert not [r for r in caplog.records if "adapter" in r.getMessage()]  # every adapter weight came from the file
    model = models[0].eval()
    assert cfg.model.layer_type == "trf_adp" and cfg.model.adp_num == NUM
    assert model.w2v_encoder.w2v_model.encoder.layers[1].adapter_layer.W_a.shape == (NUM, DIM, 32)
    with torch.no_grad():
        for key in (0, 2):  # rows whose adapters output zero: genuine fairseq 0.12.2's emissions
            out = model(source=inputs["source"], padding_mask=inputs["padding_mask"], corpus_key=[key, key])
            assert_close(model.get_logits(out), expected["logits"], f"logits of corpus {key}")
        live = model(source=inputs["source"], padding_mask=inputs["padding_mask"], corpus_key=torch.tensor([1, 1]))
    assert (live["encoder_out"] - torch.from_numpy(expected["encoder_out"])).abs().max() > 1e-2


def tiny_model(**overrides):
    torch.manual_seed(0)
    return build_model({**TINY, **overrides}).eval()


def test_each_corpus_key_selects_its_own_adapter_and_bad_keys_are_named():
    model = tiny_model()
    source = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = [model.extract_features(source, corpus_key=k)["x"] for k in range(NUM)]
        as_list = model.extract_features(source, corpus_key=[2, 2])["x"]
    assert torch.equal(outputs[2], as_list)
    for a in range(NUM):
        for b in range(a + 1, NUM):
            assert (outputs[a] - outputs[b]).abs().max() > 1e-3
    for bad, words in ((None, "no corpus_key"), ([0, 1], "mixes corpora"), (NUM, "out of range"),
                       (["eng", "eng"], "index")):
        with pytest.raises(DataError, match=words):
            model.extract_features(source, corpus_key=bad)


def test_adp_trf_idx_range_and_config_errors():
    model = tiny_model(encoder_layers=3, adp_trf_idx="1:3")
    assert [layer.adapter_layer is not None for layer in model.encoder.layers] == [False, True, True]
    assert not any("layers.0.adapter_layer" in k for k in model.state_dict())
    plain = tiny_model(layer_type="transformer")  # adp_* fields without trf_adp do nothing
    assert all(layer.adapter_layer is None for layer in plain.encoder.layers)
    assert plain.extract_features(torch.randn(1, 4000), corpus_key=[5])["x"].shape[-1] == 32
    for overrides, words in ((dict(adp_num=-1), "adp_num"), (dict(adp_trf_idx="first"), "adp_trf_idx"),
                             (dict(adp_trf_idx="5:9"), "selects none"), (dict(adp_act_fn="tanh"), "adp_act_fn")):
        with pytest.raises(ConfigError, match=words):
            tiny_model(**overrides)


def adapter_finetune_config(folder, *overrides):
    """vox_10h over the genuine fairseq Large-layout pretraining fixture (no adapters), with adapters added."""
    (folder / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in "|ETAONS"))
    return finalize_config(compose_config(os.path.join(REPO, "config", "finetuning"), "vox_10h", [
        f"task.data={folder}", f"model.w2v_path={os.path.join(FIXTURES, 'w2v2_large_pretrain', 'checkpoint.pt')}",
        "model.layer_type=trf_adp", f"model.adp_num={NUM}", f"model.adp_dim={DIM}", "model.freeze_finetune_updates=0",
        "model.apply_mask=false", "common.cpu=true", "optimization.lr=[0.001]", "lr_scheduler.phase_ratio=[0.0,1.0,0.0]",
        "optimization.max_update=3", *overrides]))


def ctc_sample(corpus_key):
    generator = torch.Generator().manual_seed(2)
    source = torch.randn(2, 4000, generator=generator)
    target = torch.tensor([[5, 6, 7, 4], [8, 9, 4, 1]])
    return {"id": torch.tensor([0, 1]), "nsentences": 2, "ntokens": 7, "target_lengths": torch.tensor([4, 3]),
            "target": target, "net_input": {"source": source, "padding_mask": torch.zeros(2, 4000, dtype=torch.bool),
                                            "corpus_key": [corpus_key, corpus_key]}}


def test_adapter_finetuning_from_a_model_without_adapters_trains_only_adapters_and_proj(tmp_path, caplog):
    cfg = adapter_finetune_config(tmp_path, f"model.freeze_regex='{ADAPTERS_ONLY_FREEZE_REGEX}'")
    task = setup_task(cfg.task)
    with caplog.at_level(logging.WARNING):
        model = task.build_model(cfg.model)
    warnings = [r.getMessage() for r in caplog.records if "adapter" in r.getMessage()]
    assert len(warnings) == 1 and "12 adapter tensors" in warnings[0]  # 2 layers x 6
    assert cfg.model.adp_num == NUM and cfg.model.w2v_args["model"]["layer_type"] == "trf_adp"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in model.state_dict() if ".adapter_layer." in n or n.startswith("w2v_encoder.proj.")}
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = [trainer.train_step([ctc_sample(corpus_key=1)])["loss"] for _ in range(3)]
    assert losses[-1] < losses[0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == trainable
    for key in changed & {k for k in before if ".adapter_layer." in k}:  # only language 1's rows were trained
        after = model.state_dict()[key]
        assert torch.equal(after[0], before[key][0]) and torch.equal(after[2], before[key][2])
        assert not torch.equal(after[1], before[key][1])


LANGS = ["eng", "fra", "swh"]


def padded_batch():
    source = torch.randn(2, 4000, generator=torch.Generator().manual_seed(3))
    padding = torch.zeros(2, 4000, dtype=torch.bool)
    padding[1, 3000:] = True
    return source.masked_fill(padding, 0.0), padding


def our_logits(model, source, padding, key):
    with torch.no_grad():
        out = model(source=source, padding_mask=padding, corpus_key=[key] * source.size(0))
    return model.get_logits(out).transpose(0, 1), ~out["padding_mask"]


def test_mms_adapters_export_to_hf_load_adapter_per_language_and_import_back(tmp_path):
    transformers = pytest.importorskip("transformers")
    from fairseq_lite.interop.hf_files import import_checkpoint_from_hf

    path = genuine_file_with_adapters(tmp_path, live_row="all", langs=LANGS)
    (ours,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    ours.eval()
    main = runpy.run_path(os.path.join(REPO, "scripts", "convert_to_hf.py"))["main"]
    assert main([str(path), str(tmp_path / "hf"), "--langs", ",".join(LANGS)]) == 0
    assert {f"adapter.{lang}.safetensors" for lang in LANGS} <= set(os.listdir(tmp_path / "hf"))
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert hf.config.adapter_attn_dim == DIM and hf.config.do_stable_layer_norm
    source, padding = padded_batch()
    mine = {}
    for key, lang in enumerate(LANGS):
        hf.load_adapter(lang, local_files_only=True)
        mine[lang], valid = our_logits(ours, source, padding, key)
        with torch.no_grad():
            theirs = hf(source, attention_mask=(~padding).long()).logits
        assert (mine[lang] - theirs)[valid].abs().max() <= 1e-5, lang
    assert (mine["eng"] - mine["fra"])[valid].abs().max() > 1e-2

    name = import_checkpoint_from_hf(str(tmp_path / "hf"), str(tmp_path / "back.pt"))
    (back,), cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "back.pt")])
    assert name == "wav2vec_ctc" and cfg.task.multi_corpus_keys == ",".join(LANGS)  # sorted files: eng, fra, swh
    assert cfg.model.w2v_args["model"]["adp_num"] == NUM and cfg.model.w2v_args["model"]["adp_dim"] == DIM
    original = ours.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in back.state_dict().items() if ".adapter_layer." in k)
    again, _ = our_logits(back.eval(), source, padding, 2)
    assert (again - mine["swh"])[valid].abs().max() <= 1e-5


@pytest.mark.parametrize("options, words", [
    (dict(layer_norm_first=False), "post-LN"),
    (dict(adp_trf_idx="1:2"), "every layer"),
    (dict(adp_act_fn="gelu"), "relu"),
])
def test_adapter_layouts_hf_cannot_hold_are_refused(tmp_path, options, words):
    pytest.importorskip("transformers")
    from fairseq_lite.interop.hf_files import export_checkpoint_to_hf

    state = load_checkpoint_to_cpu(str(genuine_file_with_adapters(tmp_path, langs=LANGS)))
    state["cfg"]["model"]["w2v_args"]["model"].update(options)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=words):
        export_checkpoint_to_hf(str(tmp_path / "bad.pt"), str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="--langs"):  # the languages must name every adapter row
        export_checkpoint_to_hf(str(genuine_file_with_adapters(tmp_path)), str(tmp_path / "hf"), langs=["eng"])


def test_import_of_per_language_output_layers_takes_one_language_at_a_time(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from fairseq_lite.interop.hf_files import export_checkpoint_to_hf, import_checkpoint_from_hf

    path = genuine_file_with_adapters(tmp_path, live_row="all", langs=LANGS)
    export_checkpoint_to_hf(str(path), str(tmp_path / "hf"))
    fra = tmp_path / "hf" / "adapter.fra.safetensors"
    tensors = load_file(fra)
    tensors["lm_head.bias"] = tensors["lm_head.bias"] + 1.0  # fra's own output layer
    save_file(tensors, fra)
    with pytest.raises(ConfigError, match="one language at a time"):
        import_checkpoint_from_hf(str(tmp_path / "hf"), str(tmp_path / "all.pt"))
    import_checkpoint_from_hf(str(tmp_path / "hf"), str(tmp_path / "fra.pt"), langs=["fra"])
    state = load_checkpoint_to_cpu(str(tmp_path / "fra.pt"))
    assert state["cfg"]["task"]["multi_corpus_keys"] == "fra" and state["cfg"]["model"]["adp_num"] == 1
    assert torch.equal(state["model"]["w2v_encoder.proj.bias"], tensors["lm_head.bias"])
    original = load_checkpoint_to_cpu(str(path))["model"]
    key = "w2v_encoder.w2v_model.encoder.layers.1.adapter_layer.W_a"
    assert torch.equal(state["model"][key][0], original[key][1])  # fra was row 1


def test_adapters_of_another_count_are_named(tmp_path):
    path = genuine_file_with_adapters(tmp_path)
    with pytest.raises(CheckpointError, match="adp_num"):
        checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"adp_num": NUM - 1})
