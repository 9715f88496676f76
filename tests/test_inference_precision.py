"""``--bf16`` on the CPU: autocast with the fp32 islands CUDA's autocast has (norms and softmax in fp32)."""

import torch
import torch.nn.functional as F

import fairseq_lite  # noqa: F401  (registers the models)
from fairseq_lite.inference_precision import autocast
from fairseq_lite.models import build_model

CPU = torch.device("cpu")


def test_cpu_bf16_keeps_norms_and_softmax_in_fp32_and_matmuls_in_bf16():
    """Plain CPU autocast returns bf16 from layer_norm, group_norm and softmax; ours returns what those ops give on
    the same bf16 inputs in fp32, while linear and SDPA still run in bf16."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8)
    weight = torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(F.linear(x, weight), (8,)).dtype == torch.bfloat16  # what we correct
    with autocast(CPU, "bf16"):
        hidden = F.linear(x, weight)
        assert hidden.dtype == torch.bfloat16
        outputs = {"layer_norm": torch.nn.LayerNorm(8)(hidden), "group_norm": torch.nn.GroupNorm(4, 16)(hidden),
                   "softmax": hidden.softmax(-1), "log_softmax": F.log_softmax(hidden, -1)}
        attention = F.scaled_dot_product_attention(hidden[None], hidden[None], hidden[None])
    assert attention.dtype == torch.bfloat16
    reference = hidden.float()
    expected = {"layer_norm": F.layer_norm(reference, (8,)), "group_norm": F.group_norm(reference, 4),
                "softmax": reference.softmax(-1), "log_softmax": F.log_softmax(reference, -1)}
    for name, value in outputs.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6, msg=name)


def test_a_post_ln_encoder_under_our_bf16_is_closer_to_fp32_than_plain_cpu_autocast():
    """A post-LN wav2vec 2.0 (Base's layout, 4 layers): with the norms in fp32 the residual stream stays fp32, and
    the encoder output moves less from the fp32 one than under plain CPU autocast."""
    torch.manual_seed(0)
    model = build_model({"_name": "wav2vec2", "encoder_layers": 4, "encoder_embed_dim": 256,
                         "encoder_ffn_embed_dim": 1024, "encoder_attention_heads": 4}).eval()
    wav = torch.randn(1, 16000)
    with torch.no_grad():
        fp32 = model(wav, mask=False, features_only=True)["x"]
        with autocast(CPU, "bf16"):
            ours = model(wav, mask=False, features_only=True)["x"].float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(wav, mask=False, features_only=True)["x"].float()
    error = {name: float((out - fp32).norm() / fp32.norm()) for name, out in (("ours", ours), ("plain", plain))}
    assert 0 < error["ours"] < 0.95 * error["plain"], error
