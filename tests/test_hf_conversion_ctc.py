"""Hugging Face conversion both ways through the scripts: Wav2Vec2ForCTC / Wav2Vec2ConformerForCTC folders become
fairseq-layout wav2vec_ctc checkpoints and back, and wav2vec2 pretraining checkpoints become Wav2Vec2ForPreTraining.

HF models are built from configs with random weights and saved with ``save_pretrained``; nothing is downloaded.
"""

import json
import os
import runpy
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fairseq_lite  # noqa: E402,F401
from fairseq_lite import checkpoint_utils  # noqa: E402
from fairseq_lite.decoding import ViterbiDecoder  # noqa: E402
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LETTERS = ["|", "E", "T", "A", "O", "N"]
VOCAB = {s: i for i, s in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + LETTERS)}
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             conv_dim=(24, 24, 24), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=16,
             num_conv_pos_embedding_groups=4, vocab_size=len(VOCAB), pad_token_id=0, bos_token_id=1, eos_token_id=2,
             hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
             final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05)
LAYOUTS = {
    "group_norm_post_ln": (transformers.Wav2Vec2Config, transformers.Wav2Vec2ForCTC,
                           dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)),
    "layer_norm_pre_ln": (transformers.Wav2Vec2Config, transformers.Wav2Vec2ForCTC,
                          dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)),
    "conformer_rel_pos": (transformers.Wav2Vec2ConformerConfig, transformers.Wav2Vec2ConformerForCTC,
                          dict(feat_extract_norm="layer", conv_bias=True, position_embeddings_type="relative",
                               conv_depthwise_kernel_size=7, hidden_act="swish")),
    "conformer_rope": (transformers.Wav2Vec2ConformerConfig, transformers.Wav2Vec2ConformerForCTC,
                       dict(feat_extract_norm="layer", conv_bias=True, position_embeddings_type="rotary",
                            conv_depthwise_kernel_size=7, hidden_act="swish")),
}


def script(name, *args):
    """Run a conversion script's main() in this process (a subprocess per call would double the test time)."""
    main = runpy.run_path(os.path.join(REPO, "scripts", name))["main"]
    assert main([str(a) for a in args]) == 0


def hf_ctc_folder(folder, layout):
    """A random HF CTC model saved with vocab.json and a processor; specials 1-3 never win the argmax."""
    config_cls, model_cls, extra = LAYOUTS[layout]
    torch.manual_seed(0)
    model = model_cls(config_cls(**SMALL, **extra)).eval()
    with torch.no_grad():
        model.lm_head.bias[1:4] = -50.0
        model.lm_head.weight.mul_(20.0)  # confident letters, so that greedy text is not all blank
    save_hf_ctc_folder(folder, model, do_normalize=True)
    return model


def save_hf_ctc_folder(folder, model, do_normalize):
    """``model`` saved by HF with VOCAB's vocab.json, a CTC tokenizer and a feature extractor."""
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=True)
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)


def padded_batch():
    torch.manual_seed(1)
    source = torch.randn(2, 6000)
    padding = torch.zeros(2, 6000, dtype=torch.bool)
    padding[1, 4200:] = True
    return source.masked_fill(padding, 0.0), padding


def our_logits(model, source, padding):
    with torch.no_grad():
        net_output = model(source=source, padding_mask=padding)
        return model.get_logits(net_output).transpose(0, 1), net_output["padding_mask"]


def hf_logits(model, source, padding):
    with torch.no_grad():
        return model(source, attention_mask=(~padding).long()).logits


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hf_ctc_to_fairseq_layout_and_back(tmp_path, layout):
    hf_dir, ckpt, back = tmp_path / "hf", tmp_path / "ctc.pt", tmp_path / "hf_back"
    hf = hf_ctc_folder(hf_dir, layout)
    script("convert_from_hf.py", hf_dir, ckpt)

    state = load_checkpoint_to_cpu(str(ckpt))
    assert state["cfg"]["model"]["_name"] == "wav2vec_ctc" and state["cfg"]["task"]["normalize"] is True
    assert state["cfg"]["model"]["w2v_args"]["model"]["_name"] == "wav2vec2"
    assert state["model"]["w2v_encoder.proj.weight"].shape == (len(VOCAB), 32)
    assert state["task_state"]["target_dictionary"].symbols == ["<s>", "<pad>", "</s>", "<unk>"] + LETTERS

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)])
    ours = models[0].eval()
    source, padding = padded_batch()
    mine, frame_padding = our_logits(ours, source, padding)
    valid = ~frame_padding
    assert valid[1].sum() < valid[0].sum()  # the batch really has padding
    theirs = hf_logits(hf, source, padding)
    assert (mine - theirs)[valid].abs().max() <= 1e-5
    assert (mine[~valid][:, 0] == 0).all() and torch.isinf(mine[~valid][:, 1:]).all()  # padding is forced blank

    script("convert_to_hf.py", ckpt, back)
    assert {"config.json", "model.safetensors", "vocab.json"} <= set(os.listdir(back))
    reloaded = LAYOUTS[layout][1].from_pretrained(back, local_files_only=True).eval()
    again = hf_logits(reloaded, source, padding)
    assert (again - mine)[valid].abs().max() <= 1e-5

    processor = transformers.Wav2Vec2Processor.from_pretrained(back, local_files_only=True)
    assert processor.feature_extractor.do_normalize is True
    lengths = valid.sum(-1)
    hf_text = processor.batch_decode(again.argmax(-1)[0:1])  # the unpadded row
    hypos = ViterbiDecoder(task.target_dictionary).decode(mine.float(), lengths)
    our_text = task.target_dictionary.string(hypos[0][0].tokens, "letter")
    assert our_text.strip() and " ".join(hf_text[0].split()) == " ".join(our_text.split())


PRETRAINING_LAYOUTS = {
    "transformer": ({}, transformers.Wav2Vec2ForPreTraining, "wav2vec2"),
    "conformer_rel_pos": (dict(layer_type="conformer", attn_type="espnet", pos_enc_type="rel_pos",
                               depthwise_conv_kernel_size=7, extractor_mode="layer_norm", conv_bias=True,
                               layer_norm_first=True),
                          transformers.Wav2Vec2ConformerForPreTraining, "wav2vec2_conformer"),
}


def tiny_pretraining_checkpoint(tmp_path, **extra):
    """A random tiny wav2vec2 pretraining model saved as pre.pt in fairseq's layout; returns the model."""
    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.dataclass.utils import config_to_dict
    from fairseq_lite.models import build_model

    cfg = finalize_config({"task": {"_name": "audio_pretraining", "data": str(tmp_path)},
                           "model": dict(_name="wav2vec2", quantize_targets=True, final_dim=16, encoder_layers=2,
                                         encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                                         conv_feature_layers="[(24, 10, 5)] + [(24, 3, 2)] * 2", conv_pos=16,
                                         conv_pos_groups=4, latent_vars=10, num_negatives=5, **extra)})
    torch.manual_seed(0)
    ours = build_model(cfg.model).eval()
    torch.save({"args": None, "cfg": config_to_dict(cfg), "model": ours.state_dict(), "criterion": None,
                "optimizer_history": [{"num_updates": 5}], "task_state": {}, "extra_state": {}}, tmp_path / "pre.pt")
    return ours


@pytest.mark.parametrize("layout", sorted(PRETRAINING_LAYOUTS))
def test_pretraining_checkpoint_to_hf_and_back(tmp_path, layout):
    extra, hf_class, backbone = PRETRAINING_LAYOUTS[layout]
    ours = tiny_pretraining_checkpoint(tmp_path, **extra)
    script("convert_to_hf.py", tmp_path / "pre.pt", tmp_path / "hf")
    hf = hf_class.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    source, padding = padded_batch()
    with torch.no_grad():
        mine = ours.extract_features(source, padding)
        theirs = getattr(hf, backbone)(source, attention_mask=(~padding).long()).last_hidden_state
    valid = ~mine["padding_mask"]
    assert (mine["x"] - theirs)[valid].abs().max() <= 1e-5

    script("convert_from_hf.py", tmp_path / "hf", tmp_path / "back.pt")
    back = load_checkpoint_to_cpu(str(tmp_path / "back.pt"))
    assert back["cfg"]["model"]["_name"] == "wav2vec2"
    original = ours.state_dict()
    assert set(back["model"]) == set(original)
    for key, value in original.items():
        torch.testing.assert_close(back["model"][key], value, rtol=0, atol=1e-6, msg=key)


def run_script(name, *args):
    """A conversion script as a subprocess: (exit code, stderr lines)."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)],
                            capture_output=True, text=True)
    return result.returncode, result.stderr.strip().splitlines()


def test_convert_to_hf_cli_refuses_a_non_wav2vec2_checkpoint_in_one_line(tmp_path):
    torch.save({"args": None, "cfg": {"model": {"_name": "transformer_lm"}}, "model": {}}, tmp_path / "lm.pt")
    assert run_script("convert_to_hf.py", tmp_path / "lm.pt", tmp_path / "out") == (2, [
        f"error: {tmp_path / 'lm.pt'} holds a 'transformer_lm' model; only wav2vec2, wav2vec_ctc, hubert, hubert_ctc, "
        "w2v_bert, w2v_bert_ctc convert to HF"])


def test_convert_to_hf_cli_names_weights_that_do_not_fit_the_stored_config_in_one_line(tmp_path):
    tiny_pretraining_checkpoint(tmp_path)
    state = torch.load(tmp_path / "pre.pt", weights_only=False)
    state["cfg"]["model"]["encoder_ffn_embed_dim"] = 48
    torch.save(state, tmp_path / "pre.pt")
    assert run_script("convert_to_hf.py", tmp_path / "pre.pt", tmp_path / "out") == (2, [
        "error: the checkpoint's weights do not fit the Wav2Vec2ForPreTraining its config describes: "
        "wav2vec2.encoder.layers.0.feed_forward.intermediate_dense.weight (64, 32) (config: (48, 32)), "
        "wav2vec2.encoder.layers.0.feed_forward.intermediate_dense.bias (64,) (config: (48,)), "
        "wav2vec2.encoder.layers.0.feed_forward.output_dense.weight (32, 64) (config: (32, 48))"])


def test_convert_from_hf_cli_refuses_a_bare_wav2vec2_model_in_one_line(tmp_path):
    config_cls, _, extra = LAYOUTS["group_norm_post_ln"]
    transformers.Wav2Vec2Model(config_cls(**SMALL, **extra)).save_pretrained(tmp_path / "hf")
    assert run_script("convert_from_hf.py", tmp_path / "hf", tmp_path / "out.pt") == (2, [
        f"error: {tmp_path / 'hf'} holds a Wav2Vec2Model: only ...ForCTC, ...ForPreTraining, HubertModel and "
        "Wav2Vec2BertModel folders convert (a bare Wav2Vec2Model has no pretraining heads, and HF would fill them with random weights)"])
    assert not (tmp_path / "out.pt").exists()
