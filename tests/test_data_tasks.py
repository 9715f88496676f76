"""audio_pretraining / audio_finetuning tasks: config fields, labels alignment, dictionary in task state."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

import fairseq_lite  # noqa: F401  (registers the tasks)
from fairseq_lite.data import Dictionary
from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.tasks import setup_task

RATE = 16000
LENGTHS = [3000, 1000, 5000, 4000, 2000]


@pytest.fixture
def corpus(tmp_path):
    for i, n in enumerate(LENGTHS):
        sf.write(tmp_path / f"u{i}.wav", np.random.default_rng(i).normal(0, 0.1, n).astype(np.float32), RATE)
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\n" + "".join(f"u{i}.wav\t{n}\n" for i, n in enumerate(LENGTHS)))
    (tmp_path / "train.ltr").write_text("A |\nB B |\nA B A |\nB |\nA X |\n")
    (tmp_path / "dict.ltr.txt").write_text("| 9\nA 4\nB 4\n")
    return tmp_path


def task_cfg(data, **overrides):
    return {"_name": "audio_finetuning", "data": str(data), "labels": "ltr", "tpu": False, "seed": 1, **overrides}


def test_finetuning_labels_follow_skipped_manifest_lines(corpus, caplog):
    task = setup_task(task_cfg(corpus, min_sample_size=1500))
    assert task.cfg.sample_rate == 16000 and task.cfg.rebuild_batches and task.cfg.eval_wer_post_process == "letter"
    with caplog.at_level(logging.WARNING):
        task.load_dataset("train")
    assert sum("map to <unk>" in r.message and "X" in r.message for r in caplog.records) == 1
    ds = task.dataset("train")
    assert len(ds) == 4  # line 2 (1000 samples) dropped, and its label with it
    d = task.target_dictionary
    assert ds[1]["label"].tolist() == [d.index("A"), d.index("B"), d.index("A"), d.index("|")]
    assert ds[3]["label"].tolist() == [d.index("A"), d.unk(), d.index("|")]
    batches = list(task.get_batch_iterator(ds, max_tokens=10000, seed=1).next_epoch_itr())
    assert all(b["net_input"]["source"].numel() <= 10000 for b in batches)
    batch = batches[0]
    assert set(batch) == {"id", "net_input", "target", "target_lengths", "ntokens"}
    assert batch["net_input"]["padding_mask"].dtype == torch.bool and batch["target"].dtype == torch.long
    assert sorted(i for b in batches for i in b["id"].tolist()) == [0, 1, 2, 3]


def test_label_count_mismatch_names_both_files(corpus):
    (corpus / "train.ltr").write_text("A |\nB |\n")
    task = setup_task(task_cfg(corpus))
    with pytest.raises(DataError, match=r"train.ltr has 2 lines but .*train.tsv lists 5 audio files"):
        task.load_dataset("train")


def test_dictionary_is_task_state_and_wins_over_disk(corpus, tmp_path_factory):
    task = setup_task(task_cfg(corpus))
    state = task.state_dict()
    assert isinstance(state["target_dictionary"], Dictionary) and state["target_dictionary"].index("A") == 5
    elsewhere = tmp_path_factory.mktemp("nodict")
    restored = setup_task(task_cfg(elsewhere))
    restored.load_state_dict(state)
    assert restored.target_dictionary == state["target_dictionary"]
    with pytest.raises(DataError, match="dict.ltr.txt does not exist"):
        setup_task(task_cfg(elsewhere)).target_dictionary


def test_pretraining_task_and_fairseq_tpu_yaml_fields(corpus):
    yaml = OmegaConf.create(
        {
            "_name": "audio_pretraining", "data": str(corpus), "max_sample_size": 4000, "min_sample_size": 1500,
            "normalize": True, "num_batch_buckets": 2, "precompute_mask_indices": True, "enable_padding": True,
            "inferred_w2v_config": {"mask_prob": 0.65, "mask_selection": "static"}, "tpu": True, "seed": 3,
        }
    )
    task = setup_task(yaml)
    assert task.cfg.precompute_mask_indices and task.target_dictionary is None
    with pytest.raises(ConfigError, match="inferred_w2v_config.mask_length is not set and no model is built yet"):
        task.load_dataset("train")
    task.model_cfg = finalize_config({"model": {"_name": "wav2vec2", "mask_length": 2}}).model  # the missing keys
    task.load_dataset("train")
    ds = task.dataset("train")
    assert ds.pad and ds.normalize and len(ds.buckets) >= 1
    batch = next(iter(task.get_batch_iterator(ds, max_tokens=20000, seed=3).next_epoch_itr()))
    assert batch["net_input"]["source"].shape[1] in ds.buckets.tolist()
    assert batch["net_input"]["mask_indices"].shape[0] == batch["net_input"]["source"].shape[0]
    with pytest.raises(ConfigError, match="unknown key 'task.max_sample_sise'"):
        setup_task({"_name": "audio_pretraining", "data": "x", "max_sample_sise": 1})


@pytest.mark.parametrize("key, value", [("subsample", 0.5), ("binarized_dataset", True), ("eval_wer", True)])
def test_unsupported_options_fail_clearly(corpus, key, value):
    with pytest.raises(ConfigError, match=f"task.{key}"):
        setup_task(task_cfg(corpus, **{key: value}))


def test_augmentation_only_on_train_splits(corpus):
    task = setup_task(task_cfg(corpus, augment_gain_max_db=6.0))
    assert task.augmentation("train").gain_max_db == 6.0 and task.augmentation("valid") is None


def test_bad_audio_flags_of_the_task_reach_the_dataset(corpus):
    """task.skip_invalid_audio skips and counts a corrupt file; task.strict_sample_rate refuses another rate."""
    (corpus / "u1.wav").write_bytes(b"not audio" * 20)
    sf.write(corpus / "u3.wav", np.zeros(2000, np.float32), 8000)
    task = setup_task(task_cfg(corpus, _name="audio_pretraining", labels=None, skip_invalid_audio=True))
    task.load_dataset("train")
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(len(ds))])
    assert ds.bad_files == 1 and 1 not in batch["id"].tolist() and len(batch["id"]) == len(LENGTHS) - 1
    strict = setup_task(task_cfg(corpus, _name="audio_pretraining", labels=None, strict_sample_rate=True))
    strict.load_dataset("train")
    with pytest.raises(DataError, match=r"train.tsv:5: .*u3.wav.*sample rate 8000 Hz, expected 16000 Hz"):
        strict.dataset("train")[3]
