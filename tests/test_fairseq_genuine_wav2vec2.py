"""wav2vec 2.0 files genuine fairseq 0.12.2 wrote load in fairseq_lite and compute what fairseq computed (1e-4).

tests/fixtures/fairseq/<name>/ hold a checkpoint ``fairseq-hydra-train`` wrote from fairseq's own recipe yamls
(tiny sizes, two updates), fixed inputs and fairseq's outputs on them (scripts/fairseq_fixtures/
wav2vec2_fixtures.py, run in the genuine-fairseq venv; meta.json says how each was made):

- w2v2_base_pretrain, w2v2_large_pretrain (wav2vec2_base_librispeech / wav2vec2_large_librivox): eval-mode CNN
  features, each layer's output, the final ``x`` and the quantizer's codes on a padded batch; the train-mode
  contrastive loss, logits and every gradient of fairseq's criterion, given the mask and negatives fairseq
  drew (dropout and layerdrop zeroed at load, quantizer in eval mode: its Gumbel noise cannot be replayed);
- w2v2_ctc_base_10m, w2v2_ctc_vox_10h (base_10m / vox_10h fine-tuned from those): eval-mode emissions,
  infer.py's emissions and viterbi hypotheses on the utterances' wav files, and the train-mode CTC loss and
  gradients with fairseq's time and channel masks, frozen (the recipes' freeze_finetune_updates) and unfrozen.
"""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_lite.cli import infer
from fairseq_lite.models.wav2vec import wav2vec2 as wav2vec2_module
from fairseq_lite.modules.masking import Masker
from genuine_fixtures import ATOL, assert_close, fixture, load

PRETRAININGS = ["w2v2_base_pretrain", "w2v2_large_pretrain"]
FINETUNINGS = ["w2v2_ctc_base_10m", "w2v2_ctc_vox_10h"]








def assert_equal(ours, theirs, name):
    assert np.array_equal(ours.numpy() if torch.is_tensor(ours) else ours, theirs), name


def train_step(model, criterion, sample, prefix, expected, recorded_call):
    """fairseq_lite's criterion forward/backward in train mode, checked against fairseq's ``{prefix}*`` outputs:
    loss, sample size, every logged number, the tensor ``recorded_call`` (model method name) returned, and
    the gradients (which parameters have one, and their values)."""
    returned = []
    method = getattr(model, recorded_call)
    setattr(model, recorded_call, lambda *args, **kwargs: returned.append(method(*args, **kwargs)) or returned[-1])
    try:
        model.zero_grad()
        loss, sample_size, logging_output = criterion(model, sample)
        loss.backward()
    finally:
        delattr(model, recorded_call)
    assert_close(loss, expected[f"{prefix}loss"], f"{prefix}loss")
    assert_close(sample_size, expected[f"{prefix}sample_size"], f"{prefix}sample_size")
    for key in (k for k in expected if k.startswith(f"{prefix}log_")):
        name = key[len(prefix) + 4:]
        assert name in logging_output, f"logging output {name} missing"
        assert_close(float(logging_output[name]), expected[key], key)
    assert len(returned) == 1
    return returned[0], {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def assert_gradients_match(grads, expected, prefix=""):
    """The same parameters have gradients, equal to 1e-4 of each tensor's scale (its largest entry, at least 1):
    gradients of summed losses reach ~250 here, and float32 sums over frames taken in another order (another
    thread count, another kernel) differ by ~2e-5 of that."""
    start = f"{prefix}grad."
    theirs = {k[len(start):]: v for k, v in expected.items() if k.startswith(start)}
    assert sorted(grads) == sorted(theirs), "parameters with gradients differ from fairseq's"
    for name, grad in grads.items():
        scale = max(1.0, float(np.abs(theirs[name]).max()))
        assert_close(grad, theirs[name], f"{prefix}grad of {name}", atol=ATOL * scale)


# -- pretraining ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=PRETRAININGS)
def pretraining(request):
    folder, inputs, expected, meta = fixture(request.param)
    model, cfg, task = load(folder)
    return request.param, folder, model, cfg, task, inputs, expected, meta


def test_pretraining_checkpoint_keeps_the_recipes_switches(pretraining):
    name, _, _, cfg, _, _, _, _ = pretraining
    large = name == "w2v2_large_pretrain"
    assert cfg.model._name == "wav2vec2" and cfg.task._name == "audio_pretraining"
    assert (cfg.model.layer_norm_first, str(cfg.model.extractor_mode), cfg.model.conv_bias) == (
        (True, "layer_norm", True) if large else (False, "default", False))
    assert (cfg.model.encoder_layerdrop, cfg.model.feature_grad_mult, cfg.task.normalize) == (
        (0.0, 1.0, True) if large else (0.05, 0.1, False))
    assert (cfg.model.encoder_layers, cfg.model.encoder_embed_dim, cfg.model.num_negatives) == (2, 32, 20)
    assert list(cfg.criterion.loss_weights) == ([0.1, 0] if large else [0.1, 10])


def test_pretraining_features_layers_x_and_codes_match_fairseq(pretraining):
    _, _, model, _, _, inputs, expected, _ = pretraining
    source, padding_mask = inputs["source"], inputs["padding_mask"]
    with torch.no_grad():
        assert_close(model.feature_extractor(source), expected["features"], "features")
        for i in range(len(model.encoder.layers)):
            layer = model.extract_features(source, padding_mask, layer=i)
            assert_close(layer["x"], expected[f"layer_{i}"], f"layer_{i}")
        result = model.extract_features(source, padding_mask)
        quantized, codes = model.quantize(source)
    assert_close(result["x"], expected["x"], "x")
    assert_close(result["features"], expected["unmasked_features"], "unmasked_features")
    assert_equal(result["padding_mask"], expected["frame_padding_mask"], "frame padding mask")
    assert_close(quantized, expected["quantized"], "quantized")
    assert_equal(codes, expected["codes"], "codes")


def test_pretraining_loss_logits_and_gradients_with_fairseqs_mask_and_negatives(pretraining, monkeypatch):
    _, folder, _, _, _, inputs, expected, meta = pretraining
    model, cfg, task = load(folder, meta["train_arg_overrides"])
    model.train()
    model.quantizer.eval()  # as fairseq's run: train-mode Gumbel noise cannot be replayed
    recorded = torch.from_numpy(expected["negative_indices"])

    def fairseqs_negatives(y, num, n_negatives, cross_sample_negatives=0, **_):
        """fairseq's draw: flat indices into the B×M masked targets, N per masked frame."""
        bsz, _, dim = y.shape
        assert recorded.shape == (bsz, num * n_negatives) and cross_sample_negatives == 0
        negs = y.reshape(-1, dim)[recorded.reshape(-1)].view(bsz, num, n_negatives, dim)
        return negs.permute(2, 0, 1, 3), recorded

    monkeypatch.setattr(wav2vec2_module, "sample_negatives", fairseqs_negatives)
    criterion = task.build_criterion(cfg.criterion).train()
    net_input = {**inputs, "mask_indices": torch.from_numpy(expected["mask_indices"])}
    logits, grads = train_step(model, criterion, {"id": torch.arange(2), "net_input": net_input}, "", expected,
                               "get_logits")
    assert_close(logits, expected["logits"], "logits")
    assert np.isinf(expected["logits"]).any()  # negatives equal to their positive are covered
    assert_gradients_match(grads, expected)


# -- CTC fine-tuning -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=FINETUNINGS)
def finetuning(request):
    folder, inputs, expected, meta = fixture(request.param)
    model, cfg, task = load(folder)
    return request.param, folder, model, cfg, task, inputs, expected, meta


def test_ctc_checkpoint_loads_with_its_generation_groups_and_pretraining_config(finetuning):
    name, _, model, cfg, task, _, _, _ = finetuning
    assert cfg.model._name == "wav2vec_ctc" and cfg.task._name == "audio_finetuning"
    assert not os.path.exists(cfg.model.w2v_path)  # the pretrained file is gone: w2v_args suffices, as in fairseq
    w2v_model = cfg.model.w2v_args["model"]
    assert w2v_model["layer_norm_first"] is (name == "w2v2_ctc_vox_10h")
    assert cfg.model.freeze_finetune_updates == 10000 and cfg.model.feature_grad_mult == 0.0
    assert len(task.target_dictionary) == model.w2v_encoder.proj.out_features == 19


def test_ctc_emissions_match_fairseq(finetuning):
    _, _, model, _, _, inputs, expected, _ = finetuning
    with torch.no_grad():
        net_output = model(source=inputs["source"], padding_mask=inputs["padding_mask"])
        assert_close(net_output["encoder_out"], expected["encoder_out"], "encoder_out")
        assert_equal(net_output["padding_mask"], expected["frame_padding_mask"], "frame padding mask")
        assert_close(model.get_logits(net_output), expected["logits"], "logits")
        for i in range(2):
            length = int((~inputs["padding_mask"][i]).sum())
            single = model.get_logits(model(source=inputs["source"][i : i + 1, :length], padding_mask=None))
            assert_close(single[:, 0], expected[f"single_logits_{i}"], f"single_logits_{i}")


@pytest.mark.parametrize("prefix", ["", "unfrozen_"])
def test_ctc_loss_and_gradients_with_fairseqs_masks(finetuning, prefix, monkeypatch):
    _, folder, _, _, _, inputs, expected, meta = finetuning
    model, cfg, task = load(folder, meta["train_arg_overrides"])
    model.train()
    if prefix:
        model.set_num_updates(cfg.model.freeze_finetune_updates)
    time_mask = torch.from_numpy(expected[f"{prefix}mask_indices"])
    channel_mask = torch.from_numpy(expected[f"{prefix}mask_channel_indices"])

    def fairseqs_time_mask(self, bsz, frames, padding_mask, device):
        assert time_mask.shape == (bsz, frames)
        return time_mask

    def fairseqs_channel_mask(self, bsz, channels, device):
        assert channel_mask.shape == (bsz, channels)
        return channel_mask.unsqueeze(1)

    monkeypatch.setattr(Masker, "time_mask", fairseqs_time_mask)
    monkeypatch.setattr(Masker, "channel_mask", fairseqs_channel_mask)
    criterion = task.build_criterion(cfg.criterion).train()
    sample = {"id": inputs["id"], "net_input": {"source": inputs["source"], "padding_mask": inputs["padding_mask"]},
              "target": inputs["target"], "target_lengths": inputs["target_lengths"],
              "ntokens": int(inputs["ntokens"])}
    lprobs, grads = train_step(model, criterion, sample, prefix, expected, "get_normalized_probs")
    assert_close(lprobs, expected[f"{prefix}lprobs"], f"{prefix}lprobs")
    assert_gradients_match(grads, expected, prefix)
    assert ("w2v_encoder.w2v_model.mask_emb" in grads) is bool(prefix)  # frozen: only proj learns


def infer_data(folder, meta, root):
    """A ``test`` subset over the fixture's wav files with its labels and dictionary."""
    root.mkdir()
    lengths = [sf.info(os.path.join(folder, path)).frames for path in meta["audio"]]
    (root / "test.tsv").write_text(folder + "\n" + "".join(f"{p}\t{n}\n" for p, n in zip(meta["audio"], lengths)))
    (root / "test.ltr").write_text("".join(line + "\n" for line in meta["ltr"]))
    (root / "test.wrd").write_text("".join(line + "\n" for line in meta["texts"]))
    (root / "dict.ltr.txt").write_text(open(os.path.join(folder, "dict.ltr.txt")).read())
    return root


@pytest.mark.parametrize("name", FINETUNINGS)
def test_infer_gives_fairseqs_emissions_and_viterbi_hypotheses(name, tmp_path):
    folder, _, expected, meta = fixture(name)
    data = infer_data(folder, meta, tmp_path / "data")
    argv = [str(data), "--task", "audio_finetuning", "--path", os.path.join(folder, "checkpoint.pt"),
            "--gen-subset", "test", "--w2l-decoder", "viterbi", "--criterion", "ctc", "--labels", "ltr",
            "--batch-size", "1", "--post-process", "letter", "--nbest", "1"]
    dump = tmp_path / "emissions.npz"
    assert infer.main([*argv, "--results-path", str(tmp_path / "unused"), "--dump-emissions", str(dump)]) == 0
    with np.load(dump) as emissions:
        assert list(emissions["ids"]) == [0, 1]
        offsets = np.concatenate([[0], np.cumsum(emissions["lengths"])])
        for i in range(2):
            assert_close(emissions["emissions"][offsets[i]:offsets[i + 1]], expected[f"single_logits_{i}"],
                         f"infer.py emissions of utterance {i}")
    results = tmp_path / "results"
    assert infer.main([*argv, "--results-path", str(results)]) == 0
    for prefix, texts in (("hypo.units", meta["viterbi_units"]), ("hypo.word", meta["viterbi_words"])):
        lines = (results / f"{prefix}-checkpoint.pt-test.txt").read_text().splitlines()
        assert sorted(lines) == sorted(f"{text} (None-{i})" for i, text in enumerate(texts)), prefix
