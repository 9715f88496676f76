"""HuBERT ⇄ Hugging Face Transformers (``HubertModel`` / ``HubertForCTC``, an independent implementation): the key
and config maps both ways, outputs equal in fp32 on a padded batch, and the conversion scripts' round trips.

HF models are built from configs with random weights (nothing is downloaded). fairseq's HuBERT counts a frame
as padding only when all of its samples are (``forward_padding_mask``), HF from the CNN's output lengths, so the
padded row's HF attention mask is given the length at which HF's frame count equals fairseq's.
"""

import os
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fairseq_lite  # noqa: E402,F401
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu  # noqa: E402
from fairseq_lite.interop.huggingface import (  # noqa: E402
    hf_hubert_config_kwargs,
    hubert_config_from_hf,
    wav2vec2_from_hf_state_dict,
    wav2vec2_to_hf_state_dict,
)
from fairseq_lite.models import build_model, MODEL_REGISTRY  # noqa: E402
from fairseq_lite.models.hubert.hubert import HubertConfig, HubertModel  # noqa: E402
from fairseq_lite.models.hubert.hubert_asr import HubertCtc, HubertCtcConfig  # noqa: E402
from test_hf_conversion_ctc import LETTERS, padded_batch, save_hf_ctc_folder, script, VOCAB  # noqa: E402

TINY = dict(label_rate=50, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            final_dim=16, conv_feature_layers="[(24, 10, 5)] + [(24, 3, 2)] * 3", conv_pos=16, conv_pos_groups=4)
LAYOUTS = {
    "group_norm_post_ln": dict(extractor_mode="default", layer_norm_first=False, conv_bias=False),
    "layer_norm_pre_ln": dict(extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True),
}
PRETRAINING_HEADS = ("final_proj", "label_embs_concat")


def ours_and_hf(layout):
    torch.manual_seed(0)
    cfg = HubertConfig(**TINY, **LAYOUTS[layout])
    hf = transformers.HubertModel(transformers.HubertConfig(**hf_hubert_config_kwargs(cfg))).eval()
    return HubertModel(cfg, [12]).eval(), hf


def backbone_state(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith(PRETRAINING_HEADS)}


def hf_attention_mask(hf, frame_padding):
    """The sample mask whose CNN output lengths are fairseq's HuBERT frame counts (the extra samples are zeros)."""
    lengths = (~frame_padding).sum(-1)
    mask = torch.zeros(frame_padding.size(0), 6000, dtype=torch.long)
    for row, frames in enumerate(lengths.tolist()):
        samples = min(n for n in range(6001) if hf._get_feat_extract_output_lengths(torch.tensor(n)) == frames)
        mask[row, :samples] = 1
    return mask


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_ours_to_hf_hubert_model_matches_on_a_padded_batch(layout):
    ours, hf = ours_and_hf(layout)
    hf.load_state_dict(wav2vec2_to_hf_state_dict(backbone_state(ours), hf_prefix=""), strict=True)
    source, padding = padded_batch()
    with torch.no_grad():
        mine, frame_padding = ours.extract_features(source, padding)
        theirs = hf(source, attention_mask=hf_attention_mask(hf, frame_padding)).last_hidden_state
    valid = ~frame_padding
    assert valid[1].sum() < valid[0].sum()  # the batch really has padding
    assert (mine - theirs)[valid].abs().max() <= 1e-5


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hf_hubert_model_to_ours_matches_and_maps_back_exactly(layout):
    _, hf = ours_and_hf(layout)
    ours = build_model(hubert_config_from_hf(hf.config)).eval()
    state = wav2vec2_from_hf_state_dict(hf.state_dict(), hf_prefix="")
    assert set(state) == set(backbone_state(ours))
    ours.load_state_dict({**ours.state_dict(), **state}, strict=True)
    source, padding = padded_batch()
    with torch.no_grad():
        mine, frame_padding = ours.extract_features(source, padding)
        theirs = hf(source, attention_mask=hf_attention_mask(hf, frame_padding)).last_hidden_state
        assert (mine - theirs)[~frame_padding].abs().max() <= 1e-5
        assert (ours.extract_features(source[:1])[0] - hf(source[:1]).last_hidden_state).abs().max() <= 1e-5
    back = wav2vec2_to_hf_state_dict(state, hf_prefix="")
    assert set(back) == set(hf.state_dict()) and all(torch.equal(back[k], v) for k, v in hf.state_dict().items())


def pretraining_file(tmp_path, layout):
    ours, _ = ours_and_hf(layout)
    cfg = {"model": {**vars(ours.cfg), "_name": "hubert"},
           "task": {"_name": "hubert_pretraining", "normalize": False, "data": str(tmp_path), "sample_rate": 16000,
                    "label_rate": 50}}
    torch.save({"cfg": cfg, "model": ours.state_dict()}, tmp_path / "hubert.pt")
    return ours


def test_hubert_checkpoint_to_hf_model_and_back_to_a_backbone_that_hubert_ctc_fine_tunes(tmp_path, caplog):
    ours = pretraining_file(tmp_path, "layer_norm_pre_ln")
    script("convert_to_hf.py", tmp_path / "hubert.pt", tmp_path / "hf")
    assert any("no HuBERT pretraining head" in r.getMessage() for r in caplog.records)
    hf = transformers.HubertModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    source, padding = padded_batch()
    with torch.no_grad():
        mine, frame_padding = ours.extract_features(source, padding)
        theirs = hf(source, attention_mask=hf_attention_mask(hf, frame_padding)).last_hidden_state
    assert (mine - theirs)[~frame_padding].abs().max() <= 1e-5

    script("convert_from_hf.py", tmp_path / "hf", tmp_path / "back.pt")
    back = load_checkpoint_to_cpu(str(tmp_path / "back.pt"))
    assert back["cfg"]["model"]["_name"] == "hubert" and back["cfg"]["task"]["_name"] == "hubert_pretraining"
    assert set(back["model"]) == set(backbone_state(ours))
    assert all(torch.equal(back["model"][k], v) for k, v in backbone_state(ours).items())
    task = types.SimpleNamespace(target_dictionary=list(range(len(VOCAB))))
    ctc = HubertCtc.build_model(HubertCtcConfig(_name="hubert_ctc", w2v_path=str(tmp_path / "back.pt"),
                                                normalize=False, data=""), task).eval()
    with torch.no_grad():
        fine_tuned, _ = ctc.w2v_encoder.w2v_model.extract_features(source, padding)
    assert torch.equal(fine_tuned, mine)


def hf_ctc_folder(folder, layout):
    """A random HubertForCTC saved with vocab.json and a processor."""
    _, hf = ours_and_hf(layout)
    torch.manual_seed(0)
    model = transformers.HubertForCTC(transformers.HubertConfig(**{**hf.config.to_dict(), "vocab_size": len(VOCAB),
                                                                   "final_dropout": 0.0})).eval()
    save_hf_ctc_folder(folder, model, do_normalize=False)
    return model


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hf_hubert_for_ctc_to_hubert_ctc_and_back(tmp_path, layout):
    hf = hf_ctc_folder(tmp_path / "hf", layout)
    script("convert_from_hf.py", tmp_path / "hf", tmp_path / "ctc.pt")
    state = load_checkpoint_to_cpu(str(tmp_path / "ctc.pt"))
    model_cfg = state["cfg"]["model"]
    assert model_cfg["_name"] == "hubert_ctc" and model_cfg["w2v_args"]["model"]["_name"] == "hubert"
    assert state["task_state"]["target_dictionary"].symbols == ["<s>", "<pad>", "</s>", "<unk>"] + LETTERS
    task = types.SimpleNamespace(target_dictionary=state["task_state"]["target_dictionary"])
    ours = HubertCtc.build_model(MODEL_REGISTRY.build_config(model_cfg, from_checkpoint=True), task).eval()
    ours.load_state_dict(state["model"], strict=True)
    source, padding = padded_batch()
    with torch.no_grad():
        net_output = ours(source=source, padding_mask=padding)
        mine = ours.get_logits(net_output).transpose(0, 1)
        frame_padding = net_output["padding_mask"]
        theirs = hf(source, attention_mask=hf_attention_mask(hf.hubert, frame_padding)).logits
    valid = ~frame_padding
    assert valid[1].sum() < valid[0].sum()
    assert (mine - theirs)[valid].abs().max() <= 1e-5

    script("convert_to_hf.py", tmp_path / "ctc.pt", tmp_path / "hf_back")
    reloaded = transformers.HubertForCTC.from_pretrained(tmp_path / "hf_back", local_files_only=True).eval()
    assert {"vocab.json", "model.safetensors"} <= set(os.listdir(tmp_path / "hf_back"))
    with torch.no_grad():
        again = reloaded(source, attention_mask=hf_attention_mask(reloaded.hubert, frame_padding)).logits
    assert (again - theirs).abs().max() <= 1e-5
    processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "hf_back", local_files_only=True)
    assert processor.tokenizer.convert_ids_to_tokens([0, 4]) == ["<pad>", "|"]  # what pipeline() decodes with


def hf_backbone_folder(folder, mask_time_prob):
    """A random HF HubertModel (BASE's layout: group-norm CNN, post-LN) saved without a feature extractor; with
    ``mask_time_prob`` 0 HF builds no ``masked_spec_embed``."""
    _, hf = ours_and_hf("group_norm_post_ln")
    torch.manual_seed(2)
    hf = transformers.HubertModel(transformers.HubertConfig(**{**hf.config.to_dict(), "mask_time_prob": mask_time_prob,
                                                               "mask_feature_prob": 0.0})).eval()
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("mask_time_prob", [0.05, 0.0])
def test_hf_hubert_model_import_gives_hf_hidden_states_in_both_feature_scripts(tmp_path, mask_time_prob):
    """An HF HubertModel (a backbone without pretraining heads) → convert_from_hf.py → dump_hubert_feature.py
    (1-based layer) and scripts/extract_features.py (0-based) on a one-file manifest: HF's hidden_states[layer]
    (post-LN: layer k's output) within 1e-5; HF's masked_spec_embed is kept as mask_emb."""
    import numpy as np
    import soundfile as sf
    from test_hubert_units import REPO, tool

    hf = hf_backbone_folder(tmp_path / "hf", mask_time_prob)
    script("convert_from_hf.py", tmp_path / "hf", tmp_path / "hubert.pt")
    stored = load_checkpoint_to_cpu(str(tmp_path / "hubert.pt"))["model"]
    assert ("mask_emb" in stored) == (mask_time_prob > 0)
    if mask_time_prob > 0:
        assert torch.equal(stored["mask_emb"], hf.masked_spec_embed)
    torch.manual_seed(3)
    wav = (torch.randn(5000) * 0.1).numpy()
    sf.write(tmp_path / "a.wav", wav, 16000, subtype="FLOAT")
    (tmp_path / "one.tsv").write_text(f"{tmp_path}\na.wav\t{len(wav)}\n")
    with torch.no_grad():
        hidden = hf(torch.from_numpy(wav).unsqueeze(0), output_hidden_states=True).hidden_states
    dump = tool("dump_hubert_feature").main
    for layer in (1, 2):
        feat_dir = tmp_path / f"feat{layer}"
        assert dump([str(tmp_path), "one", str(tmp_path / "hubert.pt"), str(layer), "1", "0", str(feat_dir),
                     "--device", "cpu"]) == 0
        assert np.abs(np.load(feat_dir / "one_0_1.npy") - hidden[layer][0].numpy()).max() <= 1e-5
    extract = tool("extract_features", os.path.join(REPO, "scripts")).main
    assert extract(["--checkpoint", str(tmp_path / "hubert.pt"), "--output", str(tmp_path / "out"), "--layers", "0",
                    "1", "--device", "cpu", str(tmp_path / "one.tsv")]) == 0
    written = np.load(tmp_path / "out" / "a.npy")
    assert written.shape == (2, *hidden[1][0].shape)
    assert np.abs(written - torch.stack(hidden[1:3], 1)[0].numpy()).max() <= 1e-5
