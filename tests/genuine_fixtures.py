"""Reading tests/fixtures/fairseq: the files genuine fairseq 0.12.2 wrote and the outputs it computed on them."""

import json
import os

import numpy as np
import torch

from fairseq_lite import checkpoint_utils

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fairseq")
ATOL = 1e-4


def fixture(name):
    """(folder, inputs as tensors, fairseq's outputs, meta) of one genuine fixture."""
    folder = os.path.join(FIXTURES, name)
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    inputs = dict(np.load(os.path.join(folder, "inputs.npz"), allow_pickle=False))
    outputs = dict(np.load(os.path.join(folder, "outputs.npz"), allow_pickle=False))
    return folder, {k: torch.from_numpy(v) for k, v in inputs.items()}, outputs, meta


def load(folder, arg_overrides=None):
    """fairseq_lite's ``load_model_ensemble_and_task`` on the fixture's checkpoint: (model in eval mode, cfg, task)."""
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(folder, "checkpoint.pt")], arg_overrides=arg_overrides)
    return models[0].eval(), cfg, task


def assert_close(ours, theirs, name, atol=ATOL):
    ours = ours.detach().float().numpy() if torch.is_tensor(ours) else np.asarray(ours, dtype=np.float32)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} vs fairseq's {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=1e-5, err_msg=name)
