"""Several corpora in one run: task.multi_corpus_keys / multi_corpus_sampling_weights, key:file splits, corpus_key.

Three tiny corpora of real audio files, each with its own constant amplitude and its own label letter, so that a
batch shows which corpus its audio and its targets came from.
"""

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.stats import chisquare

import fairseq_lite  # noqa: F401  (registers the tasks)
from fairseq_lite.data.multi_corpus import parse_sampling_weights
from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.tasks import setup_task
from fairseq_lite.training.train import main as train_main

TOOL = Path(__file__).resolve().parents[1] / "examples" / "wav2vec" / "multi_corpus_weights.py"
RATE = 16_000
KEYS = "eng,fra,deu"
CORPORA = {"eng": 9, "fra": 5, "deu": 3}  # training utterances; dev has 2 each
AMPLITUDE = {"eng": 0.1, "fra": 0.2, "deu": 0.3}
LETTER = {"eng": "A", "fra": "B", "deu": "C"}
TRAIN = "eng:eng/train,fra:fra/train,deu:deu/train"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    for key, n in CORPORA.items():
        folder = root / key
        folder.mkdir()
        for split, count in (("train", n), ("dev", 2)):
            lines = []
            for i in range(count):
                length = 2000 + 350 * i
                sf.write(folder / f"{split}{i}.wav", np.full(length, AMPLITUDE[key], np.float32), RATE)
                lines.append(f"{split}{i}.wav\t{length}\n")
            (folder / f"{split}.tsv").write_text(f"{folder}\n" + "".join(lines))
            (folder / f"{split}.ltr").write_text(f"{LETTER[key]} {LETTER[key]} |\n" * count)
    (root / "dict.ltr.txt").write_text("| 9\nA 4\nB 4\nC 4\n")
    return root


def make_task(data, weights="0.5,0.3,0.2", **overrides):
    cfg = {"_name": "audio_finetuning", "data": str(data), "labels": "ltr", "tpu": False, "seed": 1,
           "multi_corpus_keys": KEYS, "multi_corpus_sampling_weights": weights, **overrides}
    return setup_task(cfg)


def iterator(task, split, max_tokens=6000, **kwargs):
    return task.get_batch_iterator(task.dataset(split), max_tokens=max_tokens, seed=1,
                                   disable_iterator_cache=True, **kwargs)


def corpus_of_batch(batch, keys=KEYS.split(",")):
    """The corpus a collated batch came from, checked three ways: corpus_key, audio amplitude, target letters."""
    corpus_key = batch["net_input"]["corpus_key"]
    assert corpus_key.dtype == torch.long and corpus_key.shape == batch["id"].shape
    assert len(set(corpus_key.tolist())) == 1
    key = keys[int(corpus_key[0])]
    source, padding = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
    assert torch.allclose(source[~padding], torch.tensor(AMPLITUDE[key]), atol=1e-3)
    return key


def test_every_batch_holds_one_corpus_with_its_key_audio_and_labels(data):
    task = make_task(data)
    task.load_dataset(TRAIN, combine=True)
    dictionary = task.target_dictionary
    seen = set()
    for batch in iterator(task, TRAIN).next_epoch_itr():
        key = corpus_of_batch(batch)
        letter = dictionary.index(LETTER[key])
        assert set(batch["target"].unique().tolist()) == {letter, dictionary.index("|")}
        seen.add(key)
    assert seen == set(CORPORA)
    # distributed: the ranks share out the same epoch's batches, each still one corpus
    shards = [iterator(task, TRAIN, num_shards=2, shard_id=r).next_epoch_itr() for r in (0, 1)]
    rank_ids = [[tuple(b["id"].tolist()) for b in shard if b and corpus_of_batch(b)] for shard in shards]
    whole = iterator(task, TRAIN).frozen_batches
    assert sorted(rank_ids[0] + rank_ids[1]) == sorted(tuple(b.tolist()) for b in whole)


def one_utterance_batches(task, dataset, epoch):
    """The task's batches of ``epoch`` with one utterance each (what EpochBatchIterator shuffles and shards)."""
    return task._make_batches(dataset, epoch, max_tokens=None, max_sentences=1, max_positions=None,
                              ignore_invalid_inputs=True, required_batch_size_multiple=1, seed=1)


def test_sampling_frequencies_follow_the_weights(data):
    """Over 150 epochs of one-utterance batches the corpus counts pass a chi-square test against the weights
    (the corpora's own sizes, 9:5:3, would fail it); every epoch has as many batches as the corpora together."""
    for weights in ([0.2, 0.3, 0.5], [0.1, 0.1, 0.8]):
        task = make_task(data, ",".join(map(str, weights)))
        task.load_dataset(TRAIN, combine=True)
        dataset = task.dataset(TRAIN)
        counts = np.zeros(3)
        for epoch in range(1, 151):
            batches = one_utterance_batches(task, dataset, epoch)
            assert len(batches) == sum(CORPORA.values())
            for b in batches:
                counts[dataset.locate(int(b[0]))[0]] += 1
        expected = np.asarray(weights) * counts.sum()
        assert chisquare(counts, expected).pvalue > 1e-3, (weights, counts.tolist())
        natural = np.asarray(list(CORPORA.values())) / sum(CORPORA.values()) * counts.sum()
        assert chisquare(counts, natural).pvalue < 1e-6
    seven, eight, seven_again = ([b.tolist() for b in one_utterance_batches(task, dataset, e)] for e in (7, 8, 7))
    assert seven == seven_again != eight  # deterministic per (seed, epoch), drawn anew each epoch


def test_resume_continues_at_the_same_batch(data):
    task = make_task(data)
    task.load_dataset(TRAIN, combine=True)
    straight = iterator(task, TRAIN, max_tokens=5000)
    ids = [b["id"].tolist() for b in straight.next_epoch_itr()]
    ids += [b["id"].tolist() for b in straight.next_epoch_itr()]  # epoch 2 draws again
    epoch_len = len(ids) // 2
    assert ids[:epoch_len] != ids[epoch_len:]

    first = iterator(task, TRAIN, max_tokens=5000)
    itr = first.next_epoch_itr()
    for _ in range(3):
        next(itr)
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    fresh = make_task(data)
    fresh.load_dataset(TRAIN, combine=True)
    resumed = iterator(fresh, TRAIN, max_tokens=5000)
    resumed.load_state_dict(state)
    rest = [b["id"].tolist() for b in resumed.next_epoch_itr()]
    rest += [b["id"].tolist() for b in resumed.next_epoch_itr()]
    assert rest == ids[3:]


def test_gen_subset_key_file_loads_that_corpus(data):
    task = make_task(data, weights=None)  # weights are for training; inference needs none
    task.load_dataset("fra:fra/dev")
    dataset = task.dataset("fra:fra/dev")
    assert len(dataset) == 2 and dataset.manifest.full_path(1) == str(data / "fra" / "dev1.wav")
    batches = list(iterator(task, "fra:fra/dev").next_epoch_itr(shuffle=False))
    assert {corpus_of_batch(b) for b in batches} == {"fra"}
    assert batches[0]["net_input"]["corpus_key"].tolist()[0] == 1  # the index of fra in multi_corpus_keys
    # a split of several corpora outside training: every utterance once, batches still one corpus each
    task.load_dataset("deu:deu/dev,eng:eng/dev")
    batches = list(iterator(task, "deu:deu/dev,eng:eng/dev").next_epoch_itr(shuffle=False))
    assert sorted(i for b in batches for i in b["id"].tolist()) == [0, 1, 2, 3]
    assert {corpus_of_batch(b) for b in batches} == {"deu", "eng"}


def test_without_multi_corpus_keys_batches_have_no_corpus_key(data, caplog):
    """Models that take no corpus_key keep working; weights without keys are ignored with a warning, as fairseq
    ignores them (MMS's infer_common.yaml unsets multi_corpus_keys alone)."""
    with caplog.at_level(logging.WARNING):
        task = setup_task({"_name": "audio_pretraining", "data": str(data / "eng"), "tpu": False,
                           "enable_padding": True, "multi_corpus_sampling_weights": "0.5,0.5"})
    assert any("multi_corpus_sampling_weights is ignored" in r.message for r in caplog.records)
    task.load_dataset("train")
    batch = next(iter(iterator(task, "train").next_epoch_itr()))
    assert set(batch["net_input"]) == {"source", "padding_mask"}


@pytest.mark.parametrize("overrides, split, message", [
    ({"multi_corpus_sampling_weights": "0.5,0.3,0.1"}, None,
     r"task.multi_corpus_sampling_weights='0.5,0.3,0.1' sums to 0.9, not 1 \(±1e-06\): use e.g. "
     r"0.5555555556,0.3333333333,0.1111111111"),
    ({"multi_corpus_sampling_weights": "0.5,0.5"}, None, r"has 2 weights for the 3 keys .*\(eng,fra,deu\)"),
    ({"multi_corpus_sampling_weights": "0.5,x,0.5"}, None, "is not a comma-separated list of numbers"),
    ({"multi_corpus_sampling_weights": "1.5,-0.5,0"}, None, "negative or non-finite weight"),
    ({"multi_corpus_keys": "eng,,deu"}, None, "has an empty key"),
    ({"multi_corpus_keys": "eng,fra,eng"}, None, "repeats eng"),
    ({}, "eng/train", r"entry 'eng/train' has no corpus key; .* key:file,key:file, e.g. eng:eng/train"),
    ({}, "eng:eng/train,spa:spa/train", r"corpus key 'spa' is not in task.multi_corpus_keys=eng,fra,deu"),
    ({}, "eng:eng/train,eng:eng/dev", "names corpus 'eng' twice"),
    ({"multi_corpus_sampling_weights": None}, TRAIN, "needs task.multi_corpus_sampling_weights"),
    ({"multi_corpus_keys": None, "multi_corpus_sampling_weights": None}, "fra:fra/dev",
     "split 'fra:fra/dev' is written key:file but task.multi_corpus_keys is not set: .* e.g. task.multi_corpus_keys=fra"),
    ({"multi_corpus_sampling_weights": "0,0,1"}, "eng:eng/train,fra:fra/train", "has sampling weight 0"),
])
def test_bad_keys_weights_and_splits_are_one_line_errors(data, overrides, split, message):
    with pytest.raises(ConfigError, match=message) as error:
        task = make_task(data, **overrides)
        task.load_dataset(split, combine=True)
    assert "\n" not in str(error.value)


def test_weights_within_tolerance_are_accepted_and_a_subset_is_renormalised(data):
    assert parse_sampling_weights("0.3333333,0.3333333,0.3333334", KEYS.split(",")) == [0.3333333, 0.3333333, 0.3333334]
    task = make_task(data, "0.25,0.25,0.5")
    task.load_dataset("eng:eng/train,deu:deu/train", combine=True)
    assert task.dataset("eng:eng/train,deu:deu/train").weights.tolist() == [0.25, 0.5]  # drawn as 1/3, 2/3


def test_weights_tool_matches_a_hand_computation(tmp_path, capsys):
    """4 h, 1 h and 15 min of audio: sqrt gives 2 : 1 : 0.5, so the weights are 4/7, 2/7, 1/7 (alpha = 0.5);
    with alpha = 1 they are the shares 16/21, 4/21, 1/21."""
    spec = importlib.util.spec_from_file_location("multi_corpus_weights", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    main = tool.main
    hour = 3600 * RATE
    for key, frames in (("eng", [2 * hour, 2 * hour]), ("fra", [hour]), ("deu", [hour // 4])):
        (tmp_path / f"{key}.tsv").write_text("/nowhere\n" + "".join(f"{key}{i}.wav\t{n}\n" for i, n in enumerate(frames)))
    out = tmp_path / "weights.txt"
    assert main([str(tmp_path), "eng:eng,fra:fra,deu:deu", "--output", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split()[:5] == ["eng", "2", "4.000", "0.7619", "0.5714"]
    assert printed[-1] == ("task.multi_corpus_keys=eng,fra,deu "
                           "task.multi_corpus_sampling_weights=0.5714285714,0.2857142857,0.1428571429")
    written = out.read_text().strip()
    assert parse_sampling_weights(written, ["eng", "fra", "deu"]) == pytest.approx([4 / 7, 2 / 7, 1 / 7], abs=1e-10)
    main([str(tmp_path), "eng:eng,fra:fra,deu:deu", "--alpha", "1", "--output", str(out)])
    assert [float(w) for w in out.read_text().split(",")] == pytest.approx([16 / 21, 4 / 21, 1 / 21], abs=1e-10)


def _pretraining_config(data, save_dir, max_update):
    return finalize_config({
        "common": {"seed": 1, "log_interval": 1, "log_format": "simple", "cpu": True},
        "task": {"_name": "audio_pretraining", "data": str(data), "max_sample_size": 3000, "min_sample_size": 2000,
                 "multi_corpus_keys": KEYS, "multi_corpus_sampling_weights": "0.5,0.3,0.2"},
        "dataset": {"max_tokens": 9000, "num_workers": 0, "train_subset": TRAIN, "valid_subset": "eng:eng/dev,deu:deu/dev"},
        "optimization": {"max_update": max_update, "lr": [5e-4]},
        "checkpoint": {"save_dir": str(save_dir)},
        "model": {"_name": "wav2vec2", "quantize_targets": True, "final_dim": 16, "encoder_layers": 1, "encoder_embed_dim": 16,
                  "encoder_ffn_embed_dim": 32, "encoder_attention_heads": 2, "latent_vars": 8, "num_negatives": 4,
                  "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 2", "conv_pos": 16, "conv_pos_groups": 2},
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10]},
        "optimizer": {"_name": "adam"},
        "lr_scheduler": {"_name": "fixed"},
    })


def test_training_on_three_corpora_resumes_exactly(data, tmp_path):
    """fairseq-train's loop on the three corpora (validated per corpus): 3 updates, a resume in the middle of
    epoch 1, then on into epoch 2 (6 batches an epoch) end exactly as 8 updates straight."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_main(_pretraining_config(data, straight, 8))
    train_main(_pretraining_config(data, resumed, 3))
    position = torch.load(resumed / "checkpoint_last.pt", weights_only=False)["extra_state"]["train_iterator"]
    assert (position["epoch"], position["iterations_in_epoch"]) == (1, 3)
    train_main(_pretraining_config(data, resumed, 8))
    a = torch.load(straight / "checkpoint_last.pt", weights_only=False)
    b = torch.load(resumed / "checkpoint_last.pt", weights_only=False)
    assert a["extra_state"]["train_iterator"] == b["extra_state"]["train_iterator"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
