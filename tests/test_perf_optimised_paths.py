"""The optimised paths compute what the plain ones compute: q/k/v as one matmul (forward and gradients, state
dict unchanged), contrastive logits normalising x once, the fused weight-norm kernel of the positional conv,
``Wav2Vec2Model.compile`` / ``Wav2VecCtc.compile`` (torch.compile of the tensor parts) against the eager
model, and the bench helpers (FLOP count, profiler split, README writer). No timings are asserted here."""

import copy
import math
import os
import sys

import pytest
import torch

import fairseq_lite  # noqa: F401
from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from fairseq_lite.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc, Wav2VecEncoder
from fairseq_lite.modules.multihead_attention import MultiheadAttention, projection_heads
from fairseq_lite.modules.transformer_encoder import WeightNormConv1d

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_feature_layers="[(24, 10, 5)] + [(24, 3, 2)] * 2", final_dim=16, conv_pos=16, conv_pos_groups=4,
            quantize_targets=True, latent_vars=8, num_negatives=5, dropout=0.0, attention_dropout=0.0,
            encoder_layerdrop=0.0, dropout_input=0.0, dropout_features=0.0)


def split_heads(x, heads):
    bsz, length, dim = x.shape
    return x.view(bsz, length, heads, dim // heads).transpose(1, 2)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_projection_equals_separate_linears_forward_and_backward(bias):
    torch.manual_seed(0)
    projections = [torch.nn.Linear(24, 24, bias=bias) for _ in range(3)]
    reference = copy.deepcopy(projections)
    x = torch.randn(2, 7, 24, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    fused = projection_heads(x, projections, num_heads=4)
    plain = [split_heads(p(x_ref), 4) for p in reference]
    for a, b in zip(fused, plain):
        assert a.shape == (2, 4, 7, 6)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    weights = torch.randn(3, 2, 4, 7, 6)
    sum((w * t).sum() for w, t in zip(weights, fused)).backward()
    sum((w * t).sum() for w, t in zip(weights, plain)).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    for p, r in zip(projections, reference):
        torch.testing.assert_close(p.weight.grad, r.weight.grad, rtol=1e-5, atol=1e-6)
        if bias:
            torch.testing.assert_close(p.bias.grad, r.bias.grad, rtol=1e-5, atol=1e-6)


def test_attention_keeps_separate_qkv_keys_and_matches_textbook_attention():
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4).eval()
    assert {k.split(".")[0] for k in attn.state_dict()} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    x = torch.randn(2, 9, 32)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    q, k, v = (split_heads(p(x), 4) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    expected = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(attn(x, key_padding_mask=padding), expected, rtol=1e-5, atol=1e-5)


def test_legacy_packed_in_proj_still_loads_into_separate_projections():
    torch.manual_seed(0)
    attn = MultiheadAttention(16, 2)
    state = attn.state_dict()
    packed = {"in_proj_weight": torch.cat([state.pop(f"{p}_proj.weight") for p in "qkv"]),
              "in_proj_bias": torch.cat([state.pop(f"{p}_proj.bias") for p in "qkv"]), **state}
    other = MultiheadAttention(16, 2)
    other.load_state_dict(packed)
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(other(x), attn(x))


def test_attention_without_gradients_takes_the_unfused_path_with_the_same_result():
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4).eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        plain = attn(x)
    torch.testing.assert_close(attn(x).detach(), plain, rtol=1e-5, atol=1e-6)


def test_contrastive_logits_equal_torch_cosine_similarity():
    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(**TINY))
    x = torch.randn(2, 6, 16, requires_grad=True)
    y = torch.randn(2, 6, 16, requires_grad=True)
    negatives = torch.randn(5, 2, 6, 16)
    negatives[2, 1, 3] = y[1, 3].detach()  # a negative equal to its positive gets -inf
    negatives.requires_grad_(True)
    ours = model.compute_preds(x, y, negatives)
    targets = torch.cat([y.unsqueeze(0), negatives])
    expected = torch.cosine_similarity(x, targets, dim=-1) / model.logit_temp
    expected = torch.cat([expected[:1], expected[1:].masked_fill((y == negatives).all(-1), float("-inf"))])
    assert torch.isinf(ours[3, 1, 3]) and torch.equal(torch.isinf(ours), torch.isinf(expected))
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    finite = torch.isfinite(expected)
    grads = torch.autograd.grad(ours[finite].sum(), (x, y, negatives))
    for a, b in zip(grads, torch.autograd.grad(expected[finite].sum(), (x, y, negatives))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_weight_norm_equals_the_formula_and_its_gradients():
    torch.manual_seed(0)
    conv = WeightNormConv1d(32, 8, 4, init_std=0.1)
    with torch.no_grad():
        conv.weight_g.mul_(1.5)
    expected = conv.weight_v * (conv.weight_g / conv.weight_v.norm(dim=(0, 1), keepdim=True))
    torch.testing.assert_close(conv.weight, expected, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(expected)
    ours = torch.autograd.grad((conv.weight * upstream).sum(), (conv.weight_v, conv.weight_g))
    for a, b in zip(ours, torch.autograd.grad((expected * upstream).sum(), (conv.weight_v, conv.weight_g))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def assert_close_finite(a, b):
    """Equal, with -inf (a negative identical to its positive) in the same places."""
    assert torch.equal(torch.isinf(a), torch.isinf(b))
    torch.testing.assert_close(a[torch.isfinite(a)], b[torch.isfinite(b)], rtol=1e-4, atol=1e-4)


def test_compiled_wav2vec2_equals_eager_in_training():
    torch.manual_seed(0)
    eager = Wav2Vec2Model(Wav2Vec2Config(**TINY)).train()
    compiled = copy.deepcopy(eager)
    compiled.compile()
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefixes
    source = torch.randn(2, 4000)
    frames = int(eager.feature_extractor.output_lengths(torch.tensor(4000)))
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 10:30] = True
    outputs = []
    for model in (eager, compiled):
        torch.manual_seed(1)  # same gumbel noise and negatives
        out = model(source, mask_indices=mask)
        (out["x"][torch.isfinite(out["x"])].sum() + out["features_pen"]).backward()
        outputs.append(out["x"].detach())
    assert_close_finite(*outputs)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_compiled_ctc_model_equals_eager_in_inference():
    torch.manual_seed(0)
    args = {"_name": "wav2vec2", **{k: v for k, v in TINY.items() if k != "encoder_layers"}, "encoder_layers": 1}
    cfg = Wav2Vec2CtcConfig(w2v_args={"model": args, "task": {"_name": "audio_pretraining"}})
    eager = Wav2VecCtc(cfg, Wav2VecEncoder.from_config(cfg, 10)).eval()
    compiled = copy.deepcopy(eager)
    compiled.compile()
    source = torch.randn(2, 3000)
    padding = torch.zeros(2, 3000, dtype=torch.bool)
    padding[1, 2000:] = True
    with torch.inference_mode():
        a, b = (m.get_logits(m(source=source, padding_mask=padding)) for m in (eager, compiled))
    assert_close_finite(a, b)


def bench_module(name):
    sys.path.insert(0, os.path.join(REPO, "scripts", "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_bench_flop_count_and_profiler_split_see_the_matmul():
    common = bench_module("common")
    a, b = torch.randn(64, 32), torch.randn(32, 48)
    assert common.count_flops(lambda: a @ b) == 2 * 64 * 32 * 48
    split = common.profile_breakdown(lambda: [a @ b for _ in range(20)])
    assert split["matmul"] > 0 and abs(sum(split.values()) - 1.0) < 1e-6


def test_bench_driver_writes_only_between_the_markers(tmp_path):
    run_all = bench_module("run_all")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n\ntail\n")
    run_all.write_readme("| a | b |\n|---|---|", str(readme))
    run_all.write_readme("| new |\n|---|", str(readme))
    assert readme.read_text() == "# x\n\n<!-- bench:start -->\n| new |\n|---|\n<!-- bench:end -->\n\ntail\n"
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        run_all.write_readme("x", str(tmp_path / "bare.md"))
