"""wav2vec 2.0 building blocks: masking, negatives, quantizer, feature extractor, attention, pos_conv."""

import numpy as np
import pytest
import torch

from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.modules.conv_feature_extractor import ConvFeatureExtractionModel, conv_output_lengths
from fairseq_lite.modules.grad_multiply import GradMultiply
from fairseq_lite.modules.gumbel_vector_quantizer import GumbelVectorQuantizer
from fairseq_lite.modules.masking import Masker, compute_mask_indices
from fairseq_lite.modules.multihead_attention import MultiheadAttention
from fairseq_lite.modules.negatives import sample_negatives
from fairseq_lite.modules.transformer_encoder import TransformerEncoder, WeightNormConv1d, make_conv_pos

BASE_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


def _runs(row):
    """(start, end) of each run of True in a boolean row."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


# -- masking --------------------------------------------------------------------------------------

def test_mask_fraction_matches_fairseq_coverage():
    rng = np.random.default_rng(0)
    mask = compute_mask_indices((64, 1000), None, 0.65, 10, min_masks=2, require_same_masks=False, rng=rng)
    assert 0.46 < mask.mean() < 0.52  # overlapping spans: ≈ 49 % at p=0.65, L=10


def test_padding_is_never_masked_and_rows_have_equal_counts():
    padding = np.zeros((6, 300), dtype=bool)
    lengths = [300, 250, 120, 300, 60, 200]
    for i, n in enumerate(lengths):
        padding[i, n:] = True
    mask = compute_mask_indices((6, 300), torch.from_numpy(padding), 0.65, 10, min_masks=2,
                                rng=np.random.default_rng(1))
    assert not (mask & padding).any()
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and counts[0] > 0


def test_add_masks_tops_rows_up_to_the_largest_count():
    mask = compute_mask_indices((8, 200), None, 0.3, 5, min_masks=1, add_masks=True, rng=np.random.default_rng(2))
    unequal = compute_mask_indices((8, 200), None, 0.3, 5, min_masks=1, require_same_masks=False,
                                   rng=np.random.default_rng(2))
    assert (mask.sum(1) == unequal.sum(1).max()).all()


def test_no_overlap_keeps_min_space_between_spans():
    mask = compute_mask_indices((16, 400), None, 0.5, 8, no_overlap=True, min_space=3, min_masks=2,
                                require_same_masks=False, rng=np.random.default_rng(3))
    for row in mask:
        runs = _runs(row)
        assert all(e - s == 8 for s, e in runs)
        assert all(s2 - e1 >= 3 for (_, e1), (s2, _) in zip(runs, runs[1:]))


@pytest.mark.parametrize("mask_type", ["uniform", "normal", "poisson"])
def test_length_distributions_run_on_modern_numpy(mask_type):
    mask = compute_mask_indices((4, 500), None, 0.65, 10, mask_type=mask_type, mask_other=2, min_masks=2,
                                rng=np.random.default_rng(4))
    assert mask.shape == (4, 500) and 0 < mask.sum(1)[0] < 500


def test_mask_dropout_unmasks_that_fraction():
    rng = np.random.default_rng(5)
    full = compute_mask_indices((4, 500), None, 0.65, 10, min_masks=2, rng=np.random.default_rng(5))
    dropped = compute_mask_indices((4, 500), None, 0.65, 10, min_masks=2, mask_dropout=0.2, rng=rng)
    assert (dropped & ~full).sum() == 0
    assert np.allclose(dropped.sum(1), np.rint(full.sum(1) * 0.8))


def test_masking_is_reproducible_from_seed_epoch_indices():
    a = compute_mask_indices((3, 100), None, 0.65, 10, seed=1, epoch=2, indices=[5, 6, 7])
    b = compute_mask_indices((3, 100), None, 0.65, 10, seed=1, epoch=2, indices=[5, 6, 7])
    c = compute_mask_indices((3, 100), None, 0.65, 10, seed=1, epoch=3, indices=[5, 6, 7])
    assert (a == b).all() and (a != c).any()


def test_whole_sequence_masking_is_a_data_error():
    raised = 0
    for seed in range(20):  # 10 frames, two spans of 10: some draws would cover everything
        try:
            mask = compute_mask_indices((1, 10), None, 0.65, 10, min_masks=2, rng=np.random.default_rng(seed))
            assert not mask.all()
        except DataError as exc:
            assert "whole sequence" in str(exc)
            raised += 1
    assert raised > 0


# -- negatives ------------------------------------------------------------------------------------

def test_negatives_never_the_positive_and_from_the_same_utterance():
    torch.manual_seed(0)
    bsz, num, dim = 4, 30, 8
    y = torch.randn(bsz, num, dim)
    negs, idx = sample_negatives(y, num, n_negatives=20)
    assert negs.shape == (20, bsz, num, dim)
    idx = idx.view(bsz, num, 20)
    rows = idx // num
    assert (rows == torch.arange(bsz).view(bsz, 1, 1)).all()
    assert (idx % num != torch.arange(num).view(1, num, 1)).all()
    assert not (negs == y.unsqueeze(0)).all(-1).any()
    # every other frame of the utterance is drawn at some point
    assert len(torch.unique(idx[0] % num)) == num


def test_cross_sample_negatives_exclude_only_the_own_frame():
    torch.manual_seed(0)
    y = torch.randn(3, 10, 4)
    negs, idx = sample_negatives(y, 10, n_negatives=2, cross_sample_negatives=50)
    idx = idx.view(3, 10, 52)
    own = torch.arange(30).view(3, 10, 1)
    assert (idx != own).all()
    assert ((idx[..., 2:] // 10) != torch.arange(3).view(3, 1, 1)).any()  # other utterances are reachable


def test_too_few_frames_for_negatives_is_a_data_error():
    with pytest.raises(DataError, match="negatives"):
        sample_negatives(torch.randn(2, 1, 4), 1, n_negatives=5)


# -- quantizer ------------------------------------------------------------------------------------

def test_gumbel_quantizer_eval_picks_argmax_codewords_and_decays_temperature():
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(dim=16, num_vars=7, temp=(2, 0.5, 0.9), groups=2, combine_groups=False,
                              vq_dim=12, time_first=True).eval()
    x = torch.randn(3, 5, 16)
    out = q(x, produce_targets=True)
    assert out["x"].shape == (3, 5, 12) and out["num_vars"] == 14
    logits = q.weight_proj(x).view(3, 5, 2, 7)
    idx = logits.argmax(-1)
    assert torch.equal(out["targets"], idx)
    expected = torch.cat([q.vars[0, g * 7 + idx[..., g]] for g in range(2)], dim=-1)
    assert torch.allclose(out["x"], expected)
    assert 1.0 <= float(out["code_perplexity"]) <= 14.0 and 1.0 <= out["prob_perplexity"].item() <= 14.0
    q.set_num_updates(3)
    assert q.curr_temp == pytest.approx(2 * 0.9**3)
    q.set_num_updates(1000)
    assert q.curr_temp == 0.5
    qx, targets = q.forward_idx(x)
    assert torch.equal(targets, idx) and torch.allclose(qx, expected)


def test_gumbel_quantizer_training_is_straight_through_one_hot():
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(dim=8, num_vars=5, temp=(2, 0.5, 0.999995), groups=2, combine_groups=False,
                              vq_dim=6, time_first=True, weight_proj_depth=2, weight_proj_factor=2).train()
    x = torch.randn(2, 4, 8, requires_grad=True)
    out = q(x, produce_targets=True)
    codes = q.codebook().view(2, 5, 3)
    chosen = torch.cat([codes[g][out["targets"][..., g]] for g in range(2)], dim=-1)
    assert torch.allclose(out["x"], chosen, atol=1e-6)
    out["x"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.sample_from_codebook(3, 4).shape == (3, 4, 6)


def test_masker_applies_time_then_channel_masks_with_the_given_embedding():
    torch.manual_seed(0)
    masker = Masker(mask_prob=0.5, mask_length=3, mask_channel_prob=0.3, mask_channel_length=4)
    x, emb = torch.randn(2, 40, 16), torch.full((16,), 7.0)
    out, mask = masker(x, None, emb)
    assert mask.shape == (2, 40) and mask.any()
    zeroed = (out == 0).all(dim=1)  # channels zeroed over every frame
    assert zeroed.any()
    kept = ~zeroed
    assert torch.equal(out[0][mask[0]][:, kept[0]], emb[kept[0]].expand(int(mask[0].sum()), -1))
    assert torch.equal(out[0][~mask[0]][:, kept[0]], x[0][~mask[0]][:, kept[0]])
    given = torch.zeros(2, 40, dtype=torch.bool)
    given[:, :5] = True
    _, same = Masker(mask_prob=0.5, mask_length=3)(x, None, emb, mask_indices=given)
    assert torch.equal(same, given)


def test_masker_that_would_zero_every_channel_names_the_channel_settings():
    masker = Masker(mask_prob=0.0, mask_channel_prob=1.0, mask_channel_length=32)  # one span as wide as x
    with pytest.raises(ConfigError, match="all 32 channels: lower model.mask_channel_prob / model.mask_channel_length"):
        masker(torch.zeros(2, 20, 32), None, torch.zeros(32))


# -- feature extractor, attention, pos_conv ----------------------------------------------------

def test_conv_output_lengths_match_the_network():
    fe = ConvFeatureExtractionModel([(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2)
    for n in (400, 401, 16000, 12345):
        assert fe(torch.zeros(1, n)).shape[-1] == int(conv_output_lengths(torch.tensor(n), fe.conv_specs))
    assert int(conv_output_lengths(torch.tensor(16000), BASE_CONV)) == 49


def test_feature_extractor_state_dict_keys_follow_fairseq():
    default = ConvFeatureExtractionModel(BASE_CONV[:2]).state_dict()
    assert set(default) == {"conv_layers.0.0.weight", "conv_layers.0.2.weight", "conv_layers.0.2.bias",
                            "conv_layers.1.0.weight"}
    ln = ConvFeatureExtractionModel(BASE_CONV[:2], mode="layer_norm", conv_bias=True).state_dict()
    assert "conv_layers.1.2.1.weight" in ln and "conv_layers.1.0.bias" in ln


def test_grad_multiply_scales_only_the_gradient():
    x = torch.ones(3, requires_grad=True)
    y = GradMultiply.apply(x, 0.1)
    assert torch.equal(y, x.detach())
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 0.1))


def test_attention_matches_reference_softmax_with_padding_and_reads_in_proj():
    torch.manual_seed(0)
    mha = MultiheadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    out = mha(x, pad)
    q = mha.q_proj(x).view(2, 6, 4, 4).transpose(1, 2) * 0.5
    k = mha.k_proj(x).view(2, 6, 4, 4).transpose(1, 2)
    v = mha.v_proj(x).view(2, 6, 4, 4).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)).masked_fill(pad[:, None, None, :], float("-inf"))
    ref = mha.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 16))
    assert torch.allclose(out, ref, atol=1e-6)

    legacy = {k: v for k, v in mha.state_dict().items() if not k.startswith(("q_proj", "k_proj", "v_proj"))}
    legacy["in_proj_weight"] = torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight])
    legacy["in_proj_bias"] = torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias])
    other = MultiheadAttention(16, 4).eval()
    other.load_state_dict(legacy)
    assert torch.allclose(other(x, pad), out)


def test_pos_conv_equals_torch_weight_norm_and_loads_parametrization_names():
    torch.manual_seed(0)
    pos = make_conv_pos(16, 8, 4)
    conv = pos[0]
    assert conv.weight_g.shape == (1, 1, 8) and conv.weight_v.shape == (16, 4, 8)
    reference = torch.nn.Conv1d(16, 16, 8, padding=4, groups=4)
    reference = torch.nn.utils.parametrizations.weight_norm(reference, name="weight", dim=2)
    reference.load_state_dict({"bias": conv.bias, "parametrizations.weight.original0": conv.weight_g * 2,
                               "parametrizations.weight.original1": conv.weight_v})
    fresh = WeightNormConv1d(16, 8, 4, init_std=1.0)
    fresh.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 11)
    assert torch.allclose(fresh(x), reference(x), atol=1e-5)
    assert pos(x).shape == x.shape  # SamePad trims the extra frame of the even kernel


def _layers_run(encoder, x):
    """The indices of the encoder layers one forward of ``x`` runs."""
    ran = []
    hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
             for i, layer in enumerate(encoder.layers)]
    encoder(x)
    for hook in hooks:
        hook.remove()
    return ran


def test_layerdrop_draws_from_the_encoders_generator_or_the_global_rng():
    """layerdrop's per-layer draws: torch's global RNG by default (as fairseq), the encoder's
    ``layerdrop_generator`` when set (FSDP training: the same on every rank), whatever the global RNG does."""
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 8, 16, 2, dropout=0.0, layerdrop=0.5, conv_pos=2, conv_pos_groups=2).train()
    x = torch.randn(2, 5, 16)
    assert encoder.layerdrop_generator is None
    torch.manual_seed(1)
    kept = (torch.rand(8) > 0.5).nonzero().view(-1).tolist()
    torch.manual_seed(1)
    assert _layers_run(encoder, x) == kept

    kept = (torch.rand(8, generator=torch.Generator().manual_seed(7)) > 0.5).nonzero().view(-1).tolist()
    encoder.layerdrop_generator = torch.Generator()
    runs = []
    for global_seed in (2, 3):
        torch.manual_seed(global_seed)
        encoder.layerdrop_generator.manual_seed(7)
        runs.append(_layers_run(encoder, x))
    assert runs[0] == runs[1] == kept and 0 < len(kept) < 8
    assert _layers_run(encoder.eval(), x) == list(range(8))
