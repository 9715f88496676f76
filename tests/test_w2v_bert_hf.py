"""w2v-BERT 2.0 ⇄ Hugging Face Transformers (``Wav2Vec2BertModel`` / ``Wav2Vec2BertForCTC``, an independent
implementation): every layer's output on a padded batch, the waveform path against HF's own feature extractor, CTC
logits, the conversion scripts both ways (exact round trip of tensors and config) and the 2.0 preset's shapes.

HF models are built from configs with random weights (nothing is downloaded).
"""

import os
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fairseq_lite  # noqa: E402,F401
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu  # noqa: E402
from fairseq_lite.interop.huggingface_w2v_bert import (  # noqa: E402
    hf_w2v_bert_config_kwargs,
    W2V_BERT_BACKBONE_PREFIXES,
    w2v_bert_config_from_hf,
    w2v_bert_from_hf_state_dict,
    w2v_bert_to_hf_state_dict,
)
from fairseq_lite.models import MODEL_REGISTRY  # noqa: E402
from fairseq_lite.models.w2v_bert.w2v_bert import W2vBertModel  # noqa: E402
from fairseq_lite.models.w2v_bert.w2v_bert_asr import W2vBertCtc  # noqa: E402
from test_hf_conversion_ctc import save_hf_ctc_folder, script, VOCAB  # noqa: E402

#: The issue's tiny config: 32 dims, 2 layers, conv kernel 5, position clip 8/2, 4 heads; dropouts off.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_depthwise_kernel_size=5, left_max_position_embeddings=8, right_max_position_embeddings=2,
            hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
            conformer_conv_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05)
PRESET = os.path.join(os.path.dirname(__file__), "..", "fairseq_lite", "config", "model", "w2v_bert",
                      "w2v_bert_2_0.yaml")


def tiny_hf(seed=0, **changes):
    torch.manual_seed(seed)
    return transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig(**TINY, **changes)).eval()


def ours_from(hf):
    cfg = MODEL_REGISTRY.build_config(w2v_bert_config_from_hf(hf.config), from_checkpoint=True)
    model = W2vBertModel(cfg).eval()
    model.load_state_dict(w2v_bert_from_hf_state_dict(hf.state_dict()), strict=True)
    return model


def backbone_state(model):
    """Our model's tensors that HF's Wav2Vec2BertModel has (not the pretraining heads)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(W2V_BERT_BACKBONE_PREFIXES)}


def padded_features(frames=41, valid=27):
    """B=2 features (160-d, the second row padded after ``valid`` frames) and the padding mask."""
    torch.manual_seed(1)
    padding = torch.zeros(2, frames, dtype=torch.bool)
    padding[1, valid:] = True
    return torch.randn(2, frames, 160).masked_fill(padding.unsqueeze(-1), 1.0), padding


def test_every_layer_equals_hf_on_a_padded_batch():
    """Layer k's output (padded frames included) is HF's hidden_states[k + 1]; clip 8/2 is exercised (41 frames)."""
    hf = tiny_hf()
    ours = ours_from(hf)
    features, padding = padded_features()
    with torch.no_grad():
        theirs = hf(features, attention_mask=(~padding).long(), output_hidden_states=True).hidden_states
        mine = ours.encode(features, padding)
    assert len(mine["layer_results"]) == len(theirs) - 1 == 2
    for k, (x, _, _) in enumerate(mine["layer_results"]):
        assert (x - theirs[k + 1]).abs().max() <= 1e-5
    assert torch.equal(mine["x"], mine["layer_results"][-1][0])
    unpadded = ours.encode(features[1:, :27], None)["x"]  # padding does not reach the valid frames
    assert (unpadded[0] - mine["x"][1, :27]).abs().max() <= 1e-5


def test_waveforms_through_our_front_end_equal_hf_with_its_feature_extractor():
    """Raw audio of two lengths: our ``extract_features`` = HF's SeamlessM4TFeatureExtractor + Wav2Vec2BertModel."""
    hf = tiny_hf()
    ours = ours_from(hf)
    torch.manual_seed(2)
    lengths = (16000, 11237)
    waves = [torch.rand(n) * 0.2 - 0.1 for n in lengths]
    source = torch.zeros(2, lengths[0])
    padding = torch.ones(2, lengths[0], dtype=torch.bool)
    for row, wave in enumerate(waves):
        source[row, :len(wave)], padding[row, :len(wave)] = wave, False
    extractor = transformers.SeamlessM4TFeatureExtractor(padding_value=1.0)
    inputs = extractor([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = hf(inputs["input_features"], attention_mask=inputs["attention_mask"]).last_hidden_state
        mine = ours.extract_features(source, padding)
    assert torch.equal(~mine["padding_mask"], inputs["attention_mask"].bool())
    assert (mine["x"] - theirs).abs().max() <= 1e-4


def test_hf_to_ours_to_hf_is_exact_and_configs_map_back():
    hf = tiny_hf(mask_feature_prob=0.1, mask_feature_length=4)
    ours = ours_from(hf)
    back = w2v_bert_to_hf_state_dict(backbone_state(ours))
    assert back.keys() == hf.state_dict().keys()
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in back.items())
    kwargs = hf_w2v_bert_config_kwargs(ours.cfg)
    assert {k: getattr(hf.config, k) for k in kwargs} == kwargs


#: HF's adapter (add_adapter, as HF's fine-tuning blog): two layers, narrower than the encoder.
ADAPTER = dict(add_adapter=True, num_adapter_layers=2, output_hidden_size=24)


def hf_ctc_folder(folder, mask_time_prob=0.05, **changes):
    """A random Wav2Vec2BertForCTC saved with vocab.json and a processor; specials 1-3 never win."""
    torch.manual_seed(0)
    config = transformers.Wav2Vec2BertConfig(**{**TINY, "mask_time_prob": mask_time_prob}, vocab_size=len(VOCAB),
                                             pad_token_id=0, final_dropout=0.0, **changes)
    model = transformers.Wav2Vec2BertForCTC(config).eval()
    with torch.no_grad():
        model.lm_head.bias[1:4] = -50.0
    save_hf_ctc_folder(folder, model, do_normalize=False)
    return model


def load_ctc(path):
    state = load_checkpoint_to_cpu(str(path))
    task = types.SimpleNamespace(target_dictionary=state["task_state"]["target_dictionary"])
    model_cfg = MODEL_REGISTRY.build_config(state["cfg"]["model"], from_checkpoint=True)
    model = W2vBertCtc.build_model(model_cfg, task).eval()
    model.load_state_dict(state["model"], strict=True)
    return model, state


def our_ctc_logits(model, features, padding):
    """w2v_bert_ctc's logits B×T'×V and padding mask for precomputed features (encoder, adapter, proj)."""
    encoded = model.w2v_encoder.w2v_model.encode(features, padding)
    x, padding = encoded["x"], encoded["padding_mask"]
    if model.w2v_encoder.adapter is not None:
        x, padding = model.w2v_encoder.adapter(x, padding)
    return model.w2v_encoder.proj(x), padding


@pytest.mark.parametrize("mask_time_prob,adapter", [(0.05, False), (0.0, False), (0.05, True)])
def test_hf_ctc_to_w2v_bert_ctc_and_back(tmp_path, mask_time_prob, adapter):
    """Wav2Vec2BertForCTC (with HF's adapter too) → convert_from_hf.py → w2v_bert_ctc (same logits on the valid
    frames) → convert_to_hf.py → the same tensors and config; HF's masked_spec_embed, absent when it never masks,
    stays absent."""
    hf = hf_ctc_folder(tmp_path / "hf", mask_time_prob, **(ADAPTER if adapter else {}))
    script("convert_from_hf.py", tmp_path / "hf", tmp_path / "ctc.pt")
    ours, state = load_ctc(tmp_path / "ctc.pt")
    assert state["cfg"]["model"]["_name"] == "w2v_bert_ctc"
    assert state["cfg"]["model"]["w2v_args"]["model"]["_name"] == "w2v_bert"
    assert state["cfg"]["task"]["normalize"] is False
    features, padding = padded_features()
    with torch.no_grad():
        mine, out_padding = our_ctc_logits(ours, features, padding)
        theirs = hf(features, attention_mask=(~padding).long()).logits
    lengths = hf._get_feat_extract_output_lengths((~padding).sum(1))
    assert torch.equal((~out_padding).sum(1), lengths) and mine.shape == theirs.shape
    assert lengths[1] < lengths[0] and (len(features[0]) > mine.size(1)) == adapter
    assert (mine - theirs)[~out_padding].abs().max() <= 1e-5

    script("convert_to_hf.py", tmp_path / "ctc.pt", tmp_path / "hf_back")
    reloaded = transformers.Wav2Vec2BertForCTC.from_pretrained(tmp_path / "hf_back", local_files_only=True)
    assert reloaded.state_dict().keys() == hf.state_dict().keys()
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in reloaded.state_dict().items())
    same = ("vocab_size", "pad_token_id", "final_dropout", "output_hidden_size", "adapter_stride", "num_adapter_layers",
            *hf_w2v_bert_config_kwargs(ours.w2v_encoder.w2v_model.cfg))
    assert {k: getattr(reloaded.config, k) for k in same} == {k: getattr(hf.config, k) for k in same}
    processor = transformers.Wav2Vec2BertProcessor.from_pretrained(tmp_path / "hf_back", local_files_only=True)
    assert processor.tokenizer.convert_ids_to_tokens([0, 4]) == ["<pad>", "|"]
    assert processor.feature_extractor.padding_value == 1.0


def test_hf_backbone_folder_to_w2v_bert_and_back(tmp_path):
    """Wav2Vec2BertModel ↔ a ``w2v_bert`` checkpoint (the backbone continued pretraining and w2v_bert_ctc start
    from): tensors and config back exactly."""
    hf = tiny_hf(seed=3)
    hf.save_pretrained(tmp_path / "hf")
    script("convert_from_hf.py", tmp_path / "hf", tmp_path / "w2v_bert.pt")
    state = load_checkpoint_to_cpu(str(tmp_path / "w2v_bert.pt"))
    assert state["cfg"]["model"]["_name"] == "w2v_bert" and state["cfg"]["task"]["normalize"] is False
    assert torch.equal(state["model"]["mask_emb"], hf.masked_spec_embed)
    script("convert_to_hf.py", tmp_path / "w2v_bert.pt", tmp_path / "hf_back")
    reloaded = transformers.Wav2Vec2BertModel.from_pretrained(tmp_path / "hf_back", local_files_only=True)
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in reloaded.state_dict().items())
    assert reloaded.state_dict().keys() == hf.state_dict().keys()
    assert transformers.SeamlessM4TFeatureExtractor.from_pretrained(tmp_path / "hf_back").padding_value == 1.0


def test_the_2_0_preset_has_hf_default_config_shapes():
    """config/model/w2v_bert/w2v_bert_2_0.yaml = HF's default Wav2Vec2BertConfig (facebook/w2v-bert-2.0's sizes):
    the same keys, shapes and parameter count, both built on the meta device."""
    import yaml

    with open(PRESET, encoding="utf-8") as f:
        preset = yaml.safe_load(f)
    cfg = MODEL_REGISTRY.build_config({"_name": "w2v_bert", **preset}, from_checkpoint=True)
    with torch.device("meta"):
        hf = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig())
        ours = W2vBertModel(cfg)
    hf_shapes = {k: v.shape for k, v in hf.state_dict().items()}
    mapped = {k: v.shape for k, v in w2v_bert_to_hf_state_dict(backbone_state(ours)).items()}
    assert mapped == hf_shapes
    assert sum(v.numel() for v in backbone_state(ours).values()) == sum(p.numel() for p in hf.parameters()) > 580e6
    architecture = {k: v for k, v in hf_w2v_bert_config_kwargs(cfg).items() if "mask" not in k and k != "layerdrop"}
    assert architecture == {k: getattr(hf.config, k) for k in architecture}


def test_hf_backbone_import_gives_hf_hidden_states_in_both_feature_scripts(tmp_path):
    """Wav2Vec2BertModel → convert_from_hf.py → scripts/extract_features.py (0-based layers, two files in one
    padded batch, each trimmed to its frames) and dump_hubert_feature.py (1-based): HF's hidden_states on its own
    feature extractor's input."""
    import numpy as np
    import soundfile as sf
    from test_hubert_units import REPO, tool

    hf = tiny_hf(seed=4)
    hf.save_pretrained(tmp_path / "hf")
    script("convert_from_hf.py", tmp_path / "hf", tmp_path / "w2v_bert.pt")
    torch.manual_seed(5)
    waves = {"a.wav": (torch.rand(9000) * 0.2 - 0.1).numpy(), "b.wav": (torch.rand(6100) * 0.2 - 0.1).numpy()}
    for name, wave in waves.items():
        sf.write(tmp_path / name, wave, 16000, subtype="FLOAT")
    (tmp_path / "two.tsv").write_text(f"{tmp_path}\n" + "".join(f"{n}\t{len(w)}\n" for n, w in waves.items()))
    extractor = transformers.SeamlessM4TFeatureExtractor(padding_value=1.0)
    hidden = {}
    with torch.no_grad():
        for name, wave in waves.items():
            features = extractor(wave, sampling_rate=16000, return_tensors="pt")["input_features"]
            hidden[name] = hf(features, output_hidden_states=True).hidden_states
    extract = tool("extract_features", os.path.join(REPO, "scripts")).main
    assert extract(["--checkpoint", str(tmp_path / "w2v_bert.pt"), "--output", str(tmp_path / "out"), "--layers",
                    "0", "1", "--device", "cpu", str(tmp_path / "two.tsv")]) == 0
    for name in waves:
        written = np.load(tmp_path / "out" / name.replace(".wav", ".npy"))
        assert np.abs(written - torch.stack(hidden[name][1:3], 0)[:, 0].numpy()).max() <= 1e-4
    (tmp_path / "one.tsv").write_text(f"{tmp_path}\na.wav\t{len(waves['a.wav'])}\n")
    assert tool("dump_hubert_feature").main([str(tmp_path), "one", str(tmp_path / "w2v_bert.pt"), "2", "1", "0",
                                             str(tmp_path / "feat"), "--device", "cpu"]) == 0
    assert np.abs(np.load(tmp_path / "feat" / "one_0_1.npy") - hidden["a.wav"][2][0].numpy()).max() <= 1e-4
