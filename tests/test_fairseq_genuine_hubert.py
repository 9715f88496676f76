"""HuBERT files genuine fairseq 0.12.2 wrote load in fairseq_lite and compute what fairseq computed (1e-4).

tests/fixtures/fairseq/<name>/ hold a checkpoint ``fairseq-hydra-train`` wrote from fairseq's own
examples/hubert recipe yamls (tiny sizes, two updates), fixed inputs and fairseq's outputs on them
(scripts/fairseq_fixtures/hubert_fixtures.py, run in the genuine-fairseq venv; meta.json says how). Both load
through fairseq_lite's public ``checkpoint_utils.load_model_ensemble_and_task`` (genuine_fixtures.load), which
rebuilds the hubert_pretraining task from the file and its dictionaries from ``task_state``:

- hubert_base_pretrain (hubert_base_librispeech, km labels, K=8): eval-mode extract_features at output_layer 1
  and the last layer on a padded batch; the train-mode hubert criterion (loss, every logged number) and every
  gradient, given the time mask fairseq drew (dropout and layerdrop zeroed at load);
- hubert_ctc_base_10h (base_10h fine-tuned from it, ltr labels): eval-mode encoder_out, log-probs and the
  CTC loss on a padded batch, loaded with no pretraining label folder on disk (fairseq's HubertEncoder needs
  the pretraining dict.km.txt at load time; the fixture's path to it no longer exists). fairseq 0.12.2 saves
  this file with ``model.w2v_args: null`` (its hubert_pretraining task, unlike audio_pretraining, does not copy
  the loaded pretraining config back into the saved cfg), so fairseq itself reads ``model.w2v_path`` again at
  load: the test points it at hubert_base_pretrain/checkpoint.pt, the very file it was fine-tuned from.
"""

import os

import pytest
import torch

from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.interop import fairseq_pickle
from genuine_fixtures import FIXTURES, assert_close, fixture, load
from test_fairseq_genuine_wav2vec2 import assert_equal, assert_gradients_match


@pytest.fixture(scope="module")
def pretraining():
    folder, inputs, expected, meta = fixture("hubert_base_pretrain")
    return folder, inputs, expected, meta


def test_pretraining_checkpoint_loads_with_fairseqs_config(pretraining):
    """The task is rebuilt from the file, its km dictionary from task_state (the label folder is gone)."""
    folder, _, _, _ = pretraining
    model, cfg, task = load(folder)
    assert cfg.model._name == "hubert" and cfg.task._name == "hubert_pretraining"
    assert cfg.model.label_rate == 50 and list(cfg.task.labels) == ["km"]
    assert not os.path.exists(cfg.task.label_dir)
    assert [d.symbols[d.nspecial:] for d in task.dictionaries] == [[str(i) for i in range(8)]]
    assert model.label_embs_concat.shape == (8 + 4, 16)


def test_extract_features_match_fairseq(pretraining):
    folder, inputs, expected, _ = pretraining
    model, _, _ = load(folder)
    with torch.no_grad():
        layer_1, _ = model.extract_features(inputs["source"], inputs["padding_mask"], mask=False, output_layer=1)
        x, frame_padding_mask = model.extract_features(inputs["source"], inputs["padding_mask"], mask=False)
    assert_close(layer_1, expected["layer_1"], "layer_1")
    assert_close(x, expected["x"], "x")
    assert_equal(frame_padding_mask, expected["frame_padding_mask"], "frame padding mask")


def test_pretraining_loss_logging_and_gradients_with_fairseqs_mask(pretraining):
    folder, inputs, expected, meta = pretraining
    model, cfg, task = load(folder, meta["train_arg_overrides"])
    model.train()
    criterion = task.build_criterion(cfg.criterion).train()
    net_input = {"source": inputs["source"], "padding_mask": inputs["padding_mask"],
                 "mask_indices": torch.from_numpy(expected["mask_indices"])}
    sample = {"id": torch.arange(2), "net_input": net_input, "target_list": [inputs["target"]]}
    model.zero_grad()
    loss, sample_size, logging_output = criterion(model, sample)
    loss.backward()
    assert_close(loss, expected["loss"], "loss")
    assert_close(sample_size, expected["sample_size"], "sample_size")
    for key in (k for k in expected if k.startswith("log_")):
        assert key[4:] in logging_output, f"logging output {key[4:]} missing"
        assert_close(float(logging_output[key[4:]]), expected[key], key)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert_gradients_match(grads, expected)


@pytest.fixture(scope="module")
def finetuning():
    folder, inputs, expected, meta = fixture("hubert_ctc_base_10h")
    pretrained = os.path.join(os.path.dirname(folder), meta["pretrained"], "checkpoint.pt")
    model, cfg, task = load(folder, {"w2v_path": pretrained})
    return model, cfg, task, inputs, expected


def test_ctc_checkpoint_loads_without_the_pretraining_label_folder(finetuning):
    model, cfg, task, _, _ = finetuning
    raw = torch.load(os.path.join(FIXTURES, "hubert_ctc_base_10h", "checkpoint.pt"), map_location="cpu",
                     weights_only=False, pickle_module=fairseq_pickle)
    assert raw["cfg"]["model"]["w2v_args"] is None  # as fairseq 0.12.2 saves a hubert_ctc file
    assert cfg.model._name == "hubert_ctc" and cfg.task.fine_tuning
    assert not os.path.exists(cfg.model.w2v_args["task"]["label_dir"])  # fairseq would need it here
    letters = Dictionary.load(os.path.join(FIXTURES, "hubert_ctc_base_10h", "dict.ltr.txt"))
    assert task.target_dictionary.symbols == letters.symbols  # from task_state: the ltr label folder is gone too
    assert len(task.target_dictionary) == model.w2v_encoder.proj.out_features


def test_ctc_emissions_and_loss_match_fairseq(finetuning):
    model, cfg, task, inputs, expected = finetuning
    with torch.no_grad():
        net_output = model(source=inputs["source"], padding_mask=inputs["padding_mask"])
        assert_equal(net_output["padding_mask"], expected["frame_padding_mask"], "frame padding mask")
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        # fairseq's HubertCtc.get_logits means to blank padded frames but does not (a no-op in 0.12.2); ours
        # does: compare the unpadded frames only.
        valid = ~torch.from_numpy(expected["frame_padding_mask"]).t()
        assert_close(net_output["encoder_out"][valid], expected["encoder_out"][valid.numpy()], "encoder_out")
        assert_close(lprobs[valid], expected["lprobs"][valid.numpy()], "lprobs")
        sample = {"id": inputs["id"], "net_input": {"source": inputs["source"], "padding_mask": inputs["padding_mask"]},
                  "target": inputs["target"], "target_lengths": inputs["target_lengths"],
                  "ntokens": int(inputs["ntokens"])}
        loss, sample_size, _ = task.build_criterion(cfg.criterion).eval()(model, sample)
    assert_close(loss, expected["loss"], "ctc loss")
    assert_close(sample_size, expected["sample_size"], "sample_size")
