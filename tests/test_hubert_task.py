"""The hubert_pretraining task and HubertDataset: fairseq's batches (genuine fixture), crop/label alignment,
lazy label files, the errors fairseq only warns about, padded fine-tuning, dictionaries as task state.

tests/fixtures/fairseq/hubert_dataset/ holds a tiny corpus and the batches fairseq 0.12.2's own HubertDataset
(built by its hubert_pretraining task) made of it (scripts/fairseq_fixtures/hubert_dataset_fixtures.py).
"""

import dataclasses
import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import fairseq_lite  # noqa: F401  (registers the tasks)
from fairseq_lite import checkpoint_utils
from fairseq_lite.data.data_utils import numpy_seed
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.data.hubert_dataset import LabelFile, batch_audio_size, crop_starts, frame_label_window
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.interop.fairseq_checkpoint import torch_load
from fairseq_lite.interop.fairseq_schema import fairseq_schema
from fairseq_lite.tasks.hubert_pretraining import HubertPretrainingConfig
from fairseq_lite.tasks import setup_task

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fairseq")
GENUINE = os.path.join(FIXTURES, "hubert_dataset")
RATE, LABEL_RATE = 16000, 50  # 320 samples per label


def task_cfg(data, **overrides):
    return {"_name": "hubert_pretraining", "data": str(data), "labels": ["km"], "label_rate": LABEL_RATE,
            "seed": 1, **overrides}


def dataset(data, split="train", **overrides):
    task = setup_task(task_cfg(data, **overrides))
    task.load_dataset(split)
    return task.datasets[split]


@pytest.fixture
def ramp_corpus(tmp_path):
    """Clips whose sample i is i/32768 (a ramp, exact in 16-bit PCM) and km labels 0 1 2 … (label j = frame j):
    a batch row's first sample says where its crop starts, its first label which frame it starts at."""
    lengths = [3200, 4800, 6400, 5440]
    for i, n in enumerate(lengths):
        sf.write(tmp_path / f"u{i}.wav", np.arange(n, dtype=np.float32) / 32768, RATE, subtype="PCM_16")
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\n" + "".join(f"u{i}.wav\t{n}\n" for i, n in enumerate(lengths)))
    (tmp_path / "train.km").write_text("".join(" ".join(map(str, range(n // 320))) + "\n" for n in lengths))
    (tmp_path / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(20)))
    return tmp_path


# -- genuine fairseq batches ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """(our manifest folder for the fixture's audio, fairseq's meta.json, fairseq's arrays)."""
    with open(os.path.join(GENUINE, "meta.json")) as f:
        meta = json.load(f)
    data = tmp_path_factory.mktemp("hubert_manifest")
    entries = "".join(f"{name}\t{size}\n" for name, size in zip(meta["names"], meta["sizes"]))
    (data / "train.tsv").write_text(GENUINE + "\n" + entries)
    return data, meta, dict(np.load(os.path.join(GENUINE, "outputs.npz"), allow_pickle=False))


def genuine_dataset(genuine, options):
    data, meta, _ = genuine
    settings = dict(label_dir=GENUINE, labels=meta["labels"], label_rate=meta["label_rate"],
                    sample_rate=meta["sample_rate"])
    return dataset(data, **{**settings, **options})


def assert_batch_equals_fairseqs(batch, case, outputs, ntokens):
    """Our batch against fairseq's recorded one: audio, padding mask, every label set's targets and lengths."""
    expected = outputs[f"{case}_source"]
    expected = expected.astype(np.float32) / 32768 if expected.dtype == np.int16 else expected
    np.testing.assert_allclose(batch["net_input"]["source"].numpy(), expected, atol=1e-6, rtol=0)
    mask = batch["net_input"]["padding_mask"].numpy()
    assert (mask == (np.arange(mask.shape[1]) >= outputs[f"{case}_unpadded"][:, None])).all()
    single = "target" in batch
    targets = [batch["target"]] if single else batch["target_list"]
    lengths = [batch["target_lengths"]] if single else batch["target_lengths_list"]
    assert len(targets) == len(ntokens)
    for k, (target, length) in enumerate(zip(targets, lengths)):
        assert target.dtype == torch.long and np.array_equal(target.numpy(), outputs[f"{case}_target_{k}"]), k
        assert np.array_equal(length.numpy(), outputs[f"{case}_lengths_{k}"]), k
    assert ([batch["ntokens"]] if single else batch["ntokens_list"]) == ntokens


def test_padded_batch_equals_fairseqs(genuine):
    _, meta, outputs = genuine
    case = meta["cases"]["pad"]
    ours = genuine_dataset(genuine, case["options"])
    assert_batch_equals_fairseqs(ours.collater([ours[i] for i in case["ids"]]), "pad", outputs, case["ntokens"])


@pytest.mark.parametrize("case_name", ["crop", "crop_tail"])
def test_cropped_batch_equals_fairseqs_at_fairseqs_crop_starts(genuine, case_name):
    """fairseq draws its crop starts from numpy's global RNG; given the same starts our windows and labels match."""
    _, meta, outputs = genuine
    case = meta["cases"][case_name]
    ours = genuine_dataset(genuine, case["options"])
    samples = [ours[i] for i in case["ids"]]
    audio_size = batch_audio_size([len(s["source"]) for s in samples], ours.pad_audio, ours.max_sample_size)
    batch = ours.collate(samples, audio_size, outputs[f"{case_name}_starts"])
    assert_batch_equals_fairseqs(batch, case_name, outputs, case["ntokens"])


def test_finetuning_batch_is_fairseqs_padded_batch_without_pad_audio(genuine):
    """fine_tuning pads even with pad_audio false (fairseq crops audio away from its transcript there: PR #3998);
    the batch equals the one fairseq makes with pad_audio true, normalised."""
    _, meta, outputs = genuine
    case = meta["cases"]["finetune"]
    options = {k: v for k, v in case["options"].items() if k != "pad_audio"}
    ours = genuine_dataset(genuine, {**options, "random_crop": True})
    assert ours.pad_audio and not setup_task(task_cfg("/x", **options)).cfg.pad_audio
    for epoch in (1, 2):
        ours.set_epoch(epoch)
        assert_batch_equals_fairseqs(ours.collater([ours[i] for i in case["ids"]]), "finetune", outputs,
                                     case["ntokens"])


def test_sizes_and_order_equal_fairseqs(genuine):
    _, _, outputs = genuine
    padded = genuine_dataset(genuine, {"pad_audio": True, "max_sample_size": 600})
    cropped = genuine_dataset(genuine, {"pad_audio": False, "max_sample_size": 600})
    indices = np.arange(len(padded))
    assert np.array_equal(padded.num_tokens_vec(indices), outputs["num_tokens_pad"])
    assert np.array_equal(cropped.num_tokens_vec(indices), outputs["num_tokens_crop"])
    assert [cropped.size(i) for i in indices] == outputs["num_tokens_crop"].tolist()
    for seed in (0, 3):
        with numpy_seed(seed):
            assert np.array_equal(cropped.ordered_indices(), outputs[f"ordered_indices_{seed}"]), seed


def test_genuine_checkpoint_restores_its_dictionaries_without_the_label_folder():
    """fairseq's hubert checkpoint stores the km Dictionary in task_state; its label_dir no longer exists."""
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(FIXTURES, "hubert_base_pretrain", "checkpoint.pt")])
    assert not os.path.exists(cfg.task.label_dir) and task.target_dictionary is None
    (dictionary,) = task.dictionaries
    assert dictionary.symbols[4:] == [str(i) for i in range(8)]
    assert models[0].label_embs_concat.shape[0] == len(dictionary) == 12


# -- crop and label alignment ----------------------------------------------------------------------------


def test_frame_label_window_rounds_and_shortens_like_fairseq():
    # 16 kHz audio, 50 Hz labels: 320 samples per label; starts 0, 160 (0.5 rounds to 0), 480 (1.5 → 2), 800
    starts, size = frame_label_window([10, 12, 9, 20], [0, 160, 480, 800], 3200, 50, 16000, pad_audio=True)
    assert (starts, size) == ([0, 0, 2, 2], 10)
    _, cropped_size = frame_label_window([10, 12, 9, 20], [0, 160, 480, 800], 3200, 50, 16000, pad_audio=False)
    assert cropped_size == 7  # the third clip has only 9 - 2 labels left


def test_crop_starts_and_batch_size():
    rng = np.random.default_rng(0)
    assert crop_starts([100, 300, 200], 200, random_crop=False, rng=rng).tolist() == [0, 0, 0]
    starts = crop_starts([100, 300, 200, 900], 200, random_crop=True, rng=rng)
    assert starts[0] == starts[2] == 0 and 0 <= starts[1] <= 100 and 0 <= starts[3] <= 700
    assert batch_audio_size([300, 100, 200], pad_audio=False, max_sample_size=10**9) == 100
    assert batch_audio_size([300, 100, 200], pad_audio=True, max_sample_size=250) == 250


def test_random_crops_keep_audio_and_labels_aligned_and_follow_the_seed(ramp_corpus):
    ours = dataset(ramp_corpus, random_crop=True)
    samples = [ours[i] for i in range(len(ours))]
    starts_by_epoch = []
    for epoch in (1, 2, 3, 1):
        ours.set_epoch(epoch)
        batch = ours.collater(samples)
        source, target = batch["net_input"]["source"], batch["target_list"][0]
        assert source.shape == (4, 3200) and not batch["net_input"]["padding_mask"].any()
        starts = (source[:, 0] * 32768).round().long()
        assert torch.equal(source * 32768, starts[:, None] + torch.arange(3200))  # contiguous windows
        frame_starts = [int(round(s / 320)) for s in starts.tolist()]
        assert torch.equal(target, torch.tensor(frame_starts)[:, None] + torch.arange(target.shape[1]) + 4)
        assert target.shape[1] == min(10, *(n // 320 - f for n, f in zip([3200, 4800, 6400, 5440], frame_starts)))
        starts_by_epoch.append(starts.tolist())
    assert starts_by_epoch[0] == starts_by_epoch[3] and len({tuple(s) for s in starts_by_epoch}) > 1


def test_padded_pretraining_crops_only_past_max_sample_size(ramp_corpus):
    ours = dataset(ramp_corpus, pad_audio=True, random_crop=False, max_sample_size=6000)
    batch = ours.collater([ours[i] for i in range(len(ours))])
    mask = batch["net_input"]["padding_mask"]
    assert batch["net_input"]["source"].shape == (4, 6000)
    assert (~mask).sum(1).tolist() == [3200, 4800, 6000, 5440]
    assert batch["target_lengths_list"][0].tolist() == [10, 15, 19, 17]  # round(6000 / 320) = 19
    assert batch["target_list"][0][0, 10:].eq(ours.dictionaries[0].pad()).all()
    assert ours.num_tokens_vec(np.arange(4)).tolist() == [3200, 4800, 6400, 5440]


def test_finetuning_pads_whole_utterances_with_their_transcripts(ramp_corpus):
    (ramp_corpus / "train.ltr").write_text("A |\nB A |\nA B A |\nB |\n")
    (ramp_corpus / "dict.ltr.txt").write_text("| 4\nA 4\nB 3\n")
    ours = dataset(ramp_corpus, fine_tuning=True, single_target=True, labels=["ltr"], label_rate=-1.0)
    batch = ours.collater([ours[i] for i in range(4)])
    assert (~batch["net_input"]["padding_mask"]).sum(1).tolist() == [3200, 4800, 6400, 5440]
    assert batch["target_lengths"].tolist() == [2, 3, 4, 2] and batch["ntokens"] == 11
    assert ours.dictionaries[0].string(batch["target"][2]) == "A B A |"
    with pytest.raises(ConfigError, match="max_sample_size=4000 would crop audio away from its transcript"):
        dataset(ramp_corpus, fine_tuning=True, single_target=True, labels=["ltr"], label_rate=-1.0,
                max_sample_size=4000)


# -- lazy label files ------------------------------------------------------------------------------------


def test_label_file_keeps_offsets_and_reads_lines_on_demand(tmp_path):
    path = tmp_path / "train.km"
    path.write_bytes(b"1 2 3\r\n\n4 5\n6 7 8 9")  # CRLF, an empty line, no final newline
    labels = LabelFile(str(path), np.array([0, 2, 3]), 4, "train.tsv")
    assert labels.ranges.dtype == np.int64 and labels.ranges.shape == (3, 2)
    assert all(isinstance(v, (str, np.ndarray)) for v in vars(labels).values())  # offsets, no lines
    assert labels.lengths.tolist() == [3, 2, 4] and labels.line_numbers.tolist() == [1, 3, 4]
    assert labels.line(0) == "1 2 3\r\n" and labels.line(2) == "6 7 8 9"
    path.write_bytes(b"9 9 9\r\n\n1 1\n2 2 2 2")  # same offsets: items read the file again, nothing is cached
    dictionary = Dictionary()
    for symbol in "0123456789":
        dictionary.add_symbol(symbol)
    assert labels.encode(1, dictionary).tolist() == [dictionary.index("1")] * 2


def test_labels_follow_the_manifest_lines_kept(ramp_corpus):
    ours = dataset(ramp_corpus, min_sample_size=4000, max_keep_size=6000)  # drops 3200 and 6400
    assert ours.skipped_indices.tolist() == [0, 2] and len(ours) == 2
    assert ours.labels[0].line_numbers.tolist() == [2, 4]
    assert [len(ours[i]["label_list"][0]) for i in range(2)] == [15, 17]


# -- errors fairseq only warns about -----------------------------------------------------------------------


def test_label_line_count_mismatch_is_an_error(ramp_corpus):
    (ramp_corpus / "train.km").write_text("0 1\n" * 3)
    with pytest.raises(DataError, match=r"train.km has 3 lines but .*train.tsv lists 4 audio files"):
        dataset(ramp_corpus)


def test_label_duration_mismatch_names_file_line_and_label_rate(ramp_corpus):
    # line 1 (0.1 s of labels for 0.2 s of audio) is just within the 0.1 s
    with pytest.raises(DataError, match=r"train.km:2: 15 labels last 0.15 s at label_rate 100, but the audio "
                                        r"\(.*train.tsv:3, 4800 samples\) lasts 0.30 s \(3 of 4 lines .* 0.1 s\): "
                                        r"check task.label_rate"):
        dataset(ramp_corpus, label_rate=100)
    lines = (ramp_corpus / "train.km").read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:-4])  # 16 of 20 labels: 0.08 s short, within fairseq's 0.1 s
    (ramp_corpus / "train.km").write_text("\n".join(lines) + "\n")
    assert dataset(ramp_corpus).labels[0].lengths.tolist() == [10, 15, 16, 17]
    lines[2] = " ".join(lines[2].split()[:-2])
    (ramp_corpus / "train.km").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train.km:3: 14 labels last 0.28 s at label_rate 50"):
        dataset(ramp_corpus)


def test_label_missing_from_the_dictionary_is_an_error_not_unk(ramp_corpus):
    (ramp_corpus / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(12)))
    ours = dataset(ramp_corpus)
    assert ours[0]["label_list"][0].tolist() == list(range(4, 14))
    with pytest.raises(DataError, match=r"train.km:2: label '12' is not in dict.km.txt \(12 labels\).*write_km_dict"):
        ours[1]


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_missing_or_empty_km_dictionary_says_how_to_write_it(ramp_corpus, content):
    path = ramp_corpus / "dict.km.txt"
    path.unlink()
    if content is not None:
        path.write_text(content)
    problem = "does not exist" if content is None else "lists no labels"
    with pytest.raises(DataError, match=rf"dict.km.txt {problem}: write it from the k-means model: python "
                                        r"examples/hubert/simple_kmeans/write_km_dict.py .* KM_PATH"):
        dataset(ramp_corpus)


def test_missing_label_file_and_bad_label_rate(ramp_corpus):
    (ramp_corpus / "train.km").unlink()
    with pytest.raises(DataError, match=r"label file .*train.km does not exist"):
        dataset(ramp_corpus)
    with pytest.raises(ConfigError, match="label_rate must be"):
        dataset(ramp_corpus, label_rate=0)


# -- task state and options --------------------------------------------------------------------------------


def test_config_has_fairseqs_fields_and_defaults():
    fields = {f.name: f for f in dataclasses.fields(HubertPretrainingConfig)}
    ours = {"strict_sample_rate", "skip_invalid_audio", "seed"}
    assert set(fields) - ours == set(fairseq_schema()["components"]["task"]["hubert_pretraining"])
    defaults = {name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for name, f in fields.items() if name not in ours}
    assert defaults == {  # fairseq 0.12.2's HubertPretrainingConfig
        "_name": None, "data": "???", "fine_tuning": False, "labels": ["ltr"], "label_dir": None, "label_rate": -1.0,
        "sample_rate": 16000, "normalize": False, "enable_padding": False, "max_keep_size": None,
        "max_sample_size": None, "min_sample_size": None, "single_target": False, "random_crop": True,
        "pad_audio": False}


def test_dictionaries_are_task_state_and_checkpoints_need_no_label_folder(ramp_corpus, tmp_path_factory):
    task = setup_task(task_cfg(ramp_corpus, label_dir=str(ramp_corpus)))
    state = task.state_dict()
    assert list(state) == ["dictionaries"] and len(state["dictionaries"][0]) == 24 and task.target_dictionary is None
    elsewhere = tmp_path_factory.mktemp("no_labels")
    torch.save({"model": {}, "task_state": state}, elsewhere / "state.pt")
    restored = setup_task(task_cfg(elsewhere))
    restored.load_state_dict(torch_load(str(elsewhere / "state.pt"))["task_state"])  # weights_only + allow-list
    assert restored.dictionaries == state["dictionaries"]

    (ramp_corpus / "dict.ltr.txt").write_text("| 4\nA 4\n")
    finetuning = setup_task(task_cfg(ramp_corpus, fine_tuning=True, labels=["ltr"], label_rate=-1.0))
    assert list(finetuning.state_dict()) == ["target_dictionary"] and finetuning.dictionaries is None
    restored = setup_task(task_cfg(elsewhere, fine_tuning=True, labels=["ltr"], label_rate=-1.0))
    restored.load_state_dict(finetuning.state_dict())
    assert restored.target_dictionary.symbols[4:] == ["|", "A"]


def test_label_dir_defaults_to_data_and_enable_padding_warns(ramp_corpus, caplog):
    assert setup_task(task_cfg(ramp_corpus)).get_label_dir() == str(ramp_corpus)
    with caplog.at_level(logging.WARNING):
        setup_task(task_cfg(ramp_corpus, enable_padding=True))
    assert "task.enable_padding has no effect" in caplog.text and "task.pad_audio=true" in caplog.text


def test_missing_audio_is_skipped_with_its_label_line(ramp_corpus):
    (ramp_corpus / "u1.wav").unlink()
    with pytest.raises(DataError, match="skip_invalid_audio"):
        dataset(ramp_corpus)
    ours = dataset(ramp_corpus, skip_invalid_audio=True)
    assert len(ours) == 3 and [len(ours[i]["label_list"][0]) for i in range(3)] == [10, 20, 17]


def test_batches_by_max_tokens_through_the_task(ramp_corpus):
    task = setup_task(task_cfg(ramp_corpus, max_sample_size=4000))
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.datasets["train"], max_tokens=8000, seed=1).next_epoch_itr(shuffle=False)
    batches = list(itr)
    assert sorted(i for b in batches for i in b["id"].tolist()) == [0, 1, 2, 3]
    assert all(b["net_input"]["source"].numel() <= 8000 for b in batches)


def test_trained_checkpoints_need_neither_labels_nor_the_pretrained_file(ramp_corpus, tmp_path_factory):
    """hubert pretraining then hubert_ctc fine-tuning through the trainer; both files load with the data folder and
    the pretraining checkpoint gone (fairseq's hubert_ctc files need w2v_path again: theirs keep w2v_args null)."""
    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.training.train import main

    (ramp_corpus / "train.ltr").write_text("A B |\n" * 4)
    (ramp_corpus / "dict.ltr.txt").write_text("| 4\nA 4\nB 4\n")
    work = tmp_path_factory.mktemp("runs")
    tiny = {"conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2", "encoder_layers": 1,
            "encoder_embed_dim": 16, "encoder_ffn_embed_dim": 32, "encoder_attention_heads": 2, "conv_pos": 8,
            "conv_pos_groups": 2}

    def train(task, model, criterion, save_dir):
        main(finalize_config({
            "common": {"seed": 1, "cpu": True, "log_format": "none"}, "task": task_cfg(ramp_corpus, **task),
            "dataset": {"max_tokens": 40000, "disable_validation": True}, "model": model, "criterion": criterion,
            "optimization": {"max_update": 2, "lr": [1e-4]}, "optimizer": {"_name": "adam"},
            "lr_scheduler": {"_name": "fixed"}, "checkpoint": {"save_dir": str(work / save_dir)}}))
        return str(work / save_dir / "checkpoint_last.pt")

    pretrained = train({}, {"_name": "hubert", "label_rate": LABEL_RATE, "final_dim": 8, "mask_length": 2, **tiny},
                       {"_name": "hubert"}, "pretrain")
    finetuned = train({"fine_tuning": True, "single_target": True, "labels": ["ltr"], "label_rate": -1.0},
                      {"_name": "hubert_ctc", "w2v_path": pretrained, "mask_channel_length": 4}, {"_name": "ctc"},
                      "finetune")
    os.rename(ramp_corpus, f"{ramp_corpus}_gone")
    os.rename(pretrained, f"{pretrained}.gone")
    _, cfg, task = checkpoint_utils.load_model_ensemble_and_task([finetuned])
    assert task.target_dictionary.symbols[4:] == ["|", "A", "B"] and cfg.model.w2v_args["model"]["_name"] == "hubert"
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([f"{pretrained}.gone"])
    assert len(task.dictionaries[0]) == 24 == models[0].label_embs_concat.shape[0]
