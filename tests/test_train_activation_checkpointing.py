"""model.checkpoint_activations: each encoder layer is recomputed in the backward pass, and the gradients are
those of the run without it (dropout included: the recomputation replays the same random draws)."""

import torch

from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model


def _gradients(checkpoint_activations):
    """Gradients of a tiny wav2vec 2.0 pretraining forward (dropout, masks, negatives, gumbel) and how often
    encoder layer 0 ran forward."""
    cfg = Wav2Vec2Config(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                         conv_feature_layers="[(24, 10, 5)] + [(24, 3, 2)] * 2", conv_pos=16, conv_pos_groups=4,
                         final_dim=16, quantize_targets=True, latent_vars=10, num_negatives=5, dropout=0.2,
                         attention_dropout=0.2, activation_dropout=0.2, checkpoint_activations=checkpoint_activations)
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).train()
    calls = []
    model.encoder.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    source = torch.randn(3, 4000, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    out = model(source)
    logits = model.get_logits(out).float()
    loss = torch.nn.functional.cross_entropy(logits, model.get_targets(None, out), reduction="sum")
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, len(calls)


def test_checkpoint_activations_recomputes_each_layer_with_identical_gradients():
    plain, plain_calls = _gradients(False)
    checkpointed, checkpointed_calls = _gradients(True)
    assert (plain_calls, checkpointed_calls) == (1, 2)  # forward, and again in the backward pass
    assert plain.keys() == checkpointed.keys() and any(k.startswith("encoder.layers.1.") for k in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-6, msg=name)
