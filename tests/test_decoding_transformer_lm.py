"""transformer_lm: fairseq key names, causality, and a tiny trained LM that changes fairseqlm decoding."""

import pytest
import torch

from decoding_helpers import LEXICON_WORDS, SENTENCE, emissions_for, letter_dictionary, write_lexicon
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.decoding import build_decoder
from fairseq_lite.decoding.flashlight import DecoderConfig
from fairseq_lite.errors import CheckpointError
from fairseq_lite.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

TRAIN_TEXT = ["THE CAT SEES THE DOG", "THE DOG SEES THE CAT", "A CAT SEES A DOG", "THE CAT SEES A DOG"]


def tiny_config(**overrides):
    values = dict(decoder_embed_dim=32, decoder_output_dim=32, decoder_input_dim=32, decoder_ffn_embed_dim=64,
                  decoder_layers=2, decoder_attention_heads=4, dropout=0.0, tokens_per_sample=64,
                  max_target_positions=64)
    return TransformerLanguageModelConfig(**{**values, **overrides})


def word_dictionary():
    d = Dictionary()
    for word in LEXICON_WORDS:
        d.add_symbol(word)
    return d


def test_fairseq_state_dict_keys_and_causality():
    d = word_dictionary()
    model = TransformerLanguageModel(tiny_config(), d).eval()
    keys = set(model.state_dict())
    assert {"decoder.embed_tokens.weight", "decoder.layers.1.self_attn.q_proj.weight",
            "decoder.layers.0.self_attn.out_proj.bias", "decoder.layers.0.self_attn_layer_norm.weight",
            "decoder.layers.0.fc1.weight", "decoder.layers.0.fc2.bias", "decoder.layers.0.final_layer_norm.weight",
            "decoder.layer_norm.weight", "decoder.output_projection.weight"} <= keys
    assert not any("sinusoids" in k for k in keys)
    tokens = torch.tensor([[d.eos(), d.index("THE"), d.index("CAT"), d.index("SEES")]])
    logits, _ = model(tokens)
    changed = tokens.clone()
    changed[0, 3] = d.index("DOG")
    # A later token never changes earlier predictions.
    assert torch.allclose(model(changed)[0][:, :3], logits[:, :3], atol=1e-6)
    # Older fairseq files: output matrix as decoder.embed_out, plus version/_float_tensor buffers.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["decoder.embed_out"] = state.pop("decoder.output_projection.weight")
    state["decoder.version"] = torch.tensor([3.0])
    state["decoder.embed_positions._float_tensor"] = torch.zeros(1)
    other = TransformerLanguageModel(tiny_config(), d).eval()
    other.load_state_dict(state)
    assert torch.allclose(other(tokens)[0], logits)
    with pytest.raises(CheckpointError, match="adaptive"):
        other.load_state_dict({**state, "decoder.adaptive_softmax.head.weight": torch.zeros(1)})


def train_lm(d, steps=100):
    torch.manual_seed(0)
    model = TransformerLanguageModel(tiny_config(), d)
    batch = [[d.eos()] + [d.index(w) for w in s.split()] + [d.eos()] for s in TRAIN_TEXT]
    tokens = torch.tensor(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(d)), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), loss.item()


def test_tiny_trained_transformer_lm_changes_fairseqlm_output(tmp_path):
    d_lm = word_dictionary()
    model, loss = train_lm(d_lm)
    assert loss < 0.7
    lexicon = tmp_path / "lexicon.lst"
    write_lexicon(lexicon, LEXICON_WORDS)
    d = letter_dictionary()
    emissions, lengths = emissions_for([SENTENCE], d)

    def decode(lm_weight):
        cfg = DecoderConfig(beam=20, lm_weight=lm_weight, word_score=0.0, lexicon=str(lexicon))
        return build_decoder("fairseqlm", d, cfg, lm_model=model, lm_dict=d_lm).decode(emissions, lengths)[0][0].words

    assert decode(0.0) == ["THE", "CAT", "SEAS", "THE", "DOG"]
    assert decode(1.0) == SENTENCE.split()


def test_fairseq_architecture_names_give_their_sizes_and_load_checkpoints(tmp_path):
    """transformer_lm_gbw, _gpt … are fairseq's architectures: their defaults, and files saved under them load."""
    from fairseq_lite import checkpoint_utils
    from fairseq_lite.models import MODEL_REGISTRY

    gpt = MODEL_REGISTRY.dataclasses["transformer_lm_gpt"]()
    assert (gpt.decoder_embed_dim, gpt.decoder_input_dim, gpt.decoder_output_dim, gpt.decoder_ffn_embed_dim,
            gpt.decoder_layers, gpt.decoder_attention_heads, str(gpt.activation_fn)) == (768, 768, 768, 3072, 12, 12,
                                                                                         "gelu")
    gbw = MODEL_REGISTRY.dataclasses["transformer_lm_gbw"]()
    assert (gbw.decoder_embed_dim, gbw.decoder_ffn_embed_dim, gbw.decoder_layers, gbw.no_decoder_final_norm) == (
        512, 4096, 12, True)
    assert MODEL_REGISTRY.dataclasses["transformer_lm_wiki103"]().adaptive_input  # refused when built

    d = word_dictionary()
    d.save(str(tmp_path / "dict.txt"))
    model = TransformerLanguageModel(tiny_config(no_decoder_final_norm=True), d).eval()
    sizes = {k: v for k, v in vars(tiny_config()).items() if k.startswith("decoder_") or k == "dropout"}
    cfg = {"task": {"_name": "language_modeling", "data": str(tmp_path), "tokens_per_sample": 64},
           "model": {"_name": "transformer_lm_gbw", **sizes}}  # fairseq stores every field of the architecture
    torch.save({"args": None, "cfg": cfg, "model": model.state_dict(), "optimizer_history": [{"num_updates": 3}],
                "task_state": {}, "extra_state": {}}, tmp_path / "lm.pt")
    models, loaded_cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "lm.pt")])
    assert isinstance(models[0], TransformerLanguageModel) and loaded_cfg.model.no_decoder_final_norm is True
    tokens = torch.tensor([[d.eos(), d.index("THE"), d.index("CAT")]])
    torch.testing.assert_close(models[0].eval()(tokens)[0], model(tokens)[0])
