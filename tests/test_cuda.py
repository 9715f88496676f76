"""The CUDA paths: the same numbers on the GPU as on the CPU, the autocast precisions, the SDPA kernels a GPU
picks, and a few training updates in bf16/fp16. Skipped on a machine without a GPU; scripts/bench/gpu_check.py
runs this file first on the first machine with one."""

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import fairseq_lite  # noqa: F401  (registers everything)
from fairseq_lite.criterions import build_criterion
from fairseq_lite.models import build_model
from fairseq_lite.modules.multihead_attention import MultiheadAttention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/bench/gpu_check.py)")

TINY = dict(_name="wav2vec2", quantize_targets=True, final_dim=32, encoder_layers=2, encoder_embed_dim=64,
            encoder_ffn_embed_dim=128, encoder_attention_heads=4, conv_feature_layers="[(64, 10, 5)] + [(64, 3, 2)] * 4",
            conv_pos=16, conv_pos_groups=4, latent_vars=20, num_negatives=5)


def batch(device, lengths=(16000, 12000)):
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(len(lengths), max(lengths), generator=generator)
    padding_mask = torch.arange(source.size(1)).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    return source.masked_fill(padding_mask, 0.0).to(device), padding_mask.to(device)


def test_features_on_the_gpu_equal_the_cpu_in_fp32_and_stay_close_under_autocast():
    model = build_model(TINY).eval()
    source, padding_mask = batch("cpu")
    with torch.no_grad():
        expected = model.extract_features(source, padding_mask)["x"]
        gpu = copy.deepcopy(model).cuda()
        cuda_source, cuda_mask = source.cuda(), padding_mask.cuda()
        torch.testing.assert_close(gpu.extract_features(cuda_source, cuda_mask)["x"].cpu(), expected,
                                   atol=1e-4, rtol=1e-4)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cuda", dtype=dtype):
                out = gpu.extract_features(cuda_source, cuda_mask)["x"].float().cpu()
            assert torch.isfinite(out).all()
            assert (out - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
def test_attention_runs_on_the_gpus_fused_kernels_and_equals_the_math_kernel(backend):
    """Flash takes the unpadded case (no mask), memory-efficient the padded one; both equal SDPA's math kernel."""
    attention = MultiheadAttention(64, 4).cuda().eval()
    x = torch.randn(2, 50, 64, device="cuda", dtype=torch.float16)
    padding = None
    if backend == SDPBackend.EFFICIENT_ATTENTION:
        padding = torch.arange(50, device="cuda").unsqueeze(0) >= torch.tensor([[50], [37]], device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        with sdpa_kernel([SDPBackend.MATH]):
            expected = attention(x, key_padding_mask=padding)
        with sdpa_kernel([backend]):  # raises when the kernel cannot take these inputs
            out = attention(x, key_padding_mask=padding)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pretraining_updates_under_autocast_reduce_the_loss(dtype):
    torch.manual_seed(0)
    model = build_model(dict(TINY, dropout=0.0, attention_dropout=0.0, encoder_layerdrop=0.0)).cuda()
    criterion = build_criterion({"_name": "wav2vec", "infonce": True, "log_keys": ["prob_perplexity"],
                                 "loss_weights": [0.1, 10]}, None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    source, padding_mask = batch("cuda")
    sample = {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": padding_mask}}
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            loss, sample_size, _ = criterion(model, sample)
        scaler.scale(loss / sample_size).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss) / sample_size)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
