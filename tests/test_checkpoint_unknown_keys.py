"""Checkpoint configs from any fairseq era load: unknown keys at every depth are dropped with one warning."""

import logging
import os

from fairseq_lite import checkpoint_utils
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.file_io import atomic_save

CTC = os.path.join(os.path.dirname(__file__), "fixtures", "fairseq_lite_written", "w2v2_ctc_base_10m")

#: Where a newer or older fairseq put keys that fairseq_lite lacks.
UNKNOWN = {
    ("common",): "future_common_key",
    ("task",): "future_task_key",
    ("task", "eval_wer_config"): "constraints",  # every fine-tuned file of fairseq >= 0.10 has this one
    ("generation",): "future_generation_key",
    ("model",): "future_model_key",
    ("model", "w2v_args", "model"): "future_pretrained_model_key",
    ("model", "w2v_args", "task"): "future_pretrained_task_key",
    ("criterion",): "future_criterion_key",
    ("optimizer",): "future_optimizer_key",
    ("lr_scheduler",): "future_lr_scheduler_key",
    (): "job_logging_cfg",
}


def test_unknown_keys_at_every_level_are_dropped_with_one_warning(tmp_path, caplog):
    state = load_checkpoint_to_cpu(os.path.join(CTC, "checkpoint.pt"))
    for path, key in UNKNOWN.items():
        holder = state["cfg"]
        for part in path:
            holder = holder[part]
        holder[key] = {"some": "value"} if not path else "value"
    stale = tmp_path / "stale.pt"
    atomic_save(state, str(stale))

    clean, _, _ = checkpoint_utils.load_model_ensemble_and_task([os.path.join(CTC, "checkpoint.pt")],
                                                                arg_overrides={"data": CTC})
    with caplog.at_level(logging.WARNING):
        models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(stale)], arg_overrides={"data": CTC})
    warnings = [r.getMessage() for r in caplog.records if "dropping config keys" in r.getMessage()]
    assert len(warnings) == 1, warnings
    for path, key in UNKNOWN.items():
        assert ".".join(path + (key,)) in warnings[0]
    assert "future_pretrained_model_key" not in cfg.model.w2v_args["model"]
    for (name, ours), theirs in zip(models[0].state_dict().items(), clean[0].state_dict().values()):
        assert ours.equal(theirs), name
