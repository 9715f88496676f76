"""HuBERT's whole recipe on the demo corpus (issue 15), every step through its command's ``main(argv)``:

    wav2vec_manifest.py, libri_labels.py → dump_mfcc_feature.py → learn_kmeans.py (K=8) → dump_km_label.py,
    write_km_dict.py → fairseq-hydra-train hubert_base_librispeech (iteration 1) → dump_hubert_feature.py on its
    layer 1 → k-means → labels → hubert_base_librispeech again (iteration 2, 50 Hz labels) → fairseq-hydra-train
    base_10h (hubert_ctc on letters) → new/infer.py infer_viterbi and the legacy infer.py.

fairseq's own recipe yamls, shrunk by overrides to a 2-layer, 64-dim model and a few dozen CPU updates. The chain
is built once per test session (xdist workers share it through a lock) and each test checks one stage.
"""

import json
import os
import re
from types import SimpleNamespace

import jiwer
import numpy as np
import pytest
import torch
from filelock import FileLock
from sklearn.metrics import normalized_mutual_info_score

from fairseq_lite.cli import hydra_infer, hydra_train, infer
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from test_hubert_units import tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "demo", "corpus")
WAV2VEC = os.path.join(REPO, "examples", "wav2vec")
HUBERT_CONFIG = os.path.join(REPO, "examples", "hubert", "config")
K = 8
SPLITS = ("train", "valid")
#: the CNN of the tiny model: BASE's kernels and strides (20 ms frames), 64 channels
CONV = [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2
TINY = ["model.encoder_layers=2", "model.encoder_embed_dim=64", "model.encoder_ffn_embed_dim=128",
        "model.encoder_attention_heads=2", "model.final_dim=32", f'model.conv_feature_layers="{CONV}"',
        "model.conv_pos=16", "model.conv_pos_groups=4"]
CPU_RUN = ["common.cpu=true", "common.fp16=false", "distributed_training.distributed_world_size=1",
           "optimization.update_freq=[1]", "common.log_interval=1", "common.tensorboard_logdir=null",
           "dataset.num_workers=0", "dataset.max_tokens=200000"]
PRETRAIN_UPDATES = 20
SECOND_UPDATES = 12
DECODED = ("hypo.word", "hypo.units", "ref.word", "ref.units")


def records(save_dir, tag):
    """The ``tag`` lines (train_inner, valid, train) of a run's metrics.jsonl."""
    with open(os.path.join(save_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["tag"] == tag]


def mean(key, rows):
    return sum(r[key] for r in rows) / len(rows)


def label_lines(lab_dir, split):
    with open(os.path.join(lab_dir, f"{split}.km")) as f:
        return [[int(x) for x in line.split()] for line in f]


def manifest_frames(data, split):
    with open(os.path.join(data, f"{split}.tsv")) as f:
        return [int(line.split("\t")[1]) for line in f.read().splitlines()[1:]]


def cnn_frames(samples):
    """Frames of the CNN for a waveform (each conv: (n - kernel) // stride + 1)."""
    for _, kernel, stride in CONV:
        samples = (samples - kernel) // stride + 1
    return samples


def prepare_data(work):
    """Manifests (wav2vec_manifest.py) and letter labels (libri_labels.py) of the corpus' train and valid."""
    data = os.path.join(work, "data")
    for split in SPLITS:
        scan = os.path.join(work, f"scan_{split}")
        assert tool("wav2vec_manifest", WAV2VEC).main([os.path.join(CORPUS, split), "--dest", scan, "--ext", "flac",
                                                      "--valid-percent", "0", "--workers", "1"]) == 0
        os.makedirs(data, exist_ok=True)
        os.replace(os.path.join(scan, "train.tsv"), os.path.join(data, f"{split}.tsv"))
        assert tool("libri_labels", WAV2VEC).main([os.path.join(data, f"{split}.tsv"), "--output-dir", data,
                                                  "--output-name", split]) == 0
    with open(os.path.join(CORPUS, "dict.ltr.txt")) as src, open(os.path.join(data, "dict.ltr.txt"), "w") as dst:
        dst.write(src.read())
    return data


def cluster(data, feat_dir, name):
    """learn_kmeans.py on train's features, dump_km_label.py for both splits, write_km_dict.py: the label dir."""
    km_path, lab_dir = f"{feat_dir}.km.bin", os.path.join(os.path.dirname(feat_dir), name)
    assert tool("learn_kmeans").main([feat_dir, "train", "1", km_path, str(K), "--percent", "0.5",
                                      "--n_init", "3"]) == 0
    for split in SPLITS:
        assert tool("dump_km_label").main([feat_dir, split, km_path, "1", "0", lab_dir]) == 0
    assert tool("write_km_dict").main([lab_dir, km_path, "--split", *SPLITS, "--nshard", "1"]) == 0
    return lab_dir


def pretrain(data, lab_dir, label_rate, out, updates):
    """fairseq-hydra-train with hubert_base_librispeech.yaml, tiny; returns the save dir."""
    save_dir = os.path.join(out, "checkpoints")
    assert hydra_train.main([
        "--config-dir", os.path.join(HUBERT_CONFIG, "pretrain"), "--config-name", "hubert_base_librispeech",
        f"task.data={data}", f"task.label_dir={lab_dir}", "task.labels=[km]", f"model.label_rate={label_rate}",
        f"hydra.run.dir={out}", f"checkpoint.save_dir={save_dir}", *CPU_RUN, *TINY,
        f"optimization.max_update={updates}", "optimization.lr=[0.001]", "lr_scheduler.warmup_updates=2",
        "task.max_sample_size=64000"]) == 0
    return save_dir


def finetune(data, pretrained, out):
    """fairseq-hydra-train with base_10h.yaml (hubert_ctc on letters), few updates and nothing frozen."""
    save_dir = os.path.join(out, "checkpoints")
    assert hydra_train.main([
        "--config-dir", os.path.join(HUBERT_CONFIG, "finetune"), "--config-name", "base_10h", f"task.data={data}",
        f"task.label_dir={data}", f"model.w2v_path={pretrained}", f"hydra.run.dir={out}",
        f"checkpoint.save_dir={save_dir}", *CPU_RUN, "optimization.max_update=10", "optimization.lr=[0.005]",
        "lr_scheduler.warmup_steps=2", "lr_scheduler.decay_steps=8", "model.freeze_finetune_updates=0",
        "model.mask_channel_length=8", "model.layerdrop=0"]) == 0
    return save_dir


def decode(data, checkpoint, work):
    """The valid subset through both front ends, with the same batches (infer_viterbi.yaml's max_tokens)."""
    new, legacy = os.path.join(work, "decode_new"), os.path.join(work, "decode_legacy")
    assert hydra_infer.main([
        "--config-dir", os.path.join(HUBERT_CONFIG, "decode"), "--config-name", "infer_viterbi", f"task.data={data}",
        "task.normalize=false", f"common_eval.path={checkpoint}", "dataset.gen_subset=valid",
        f"common_eval.results_path={new}", f"decoding.results_path={new}", "common.cpu=true"]) == 0
    assert infer.main([
        data, "--task", "hubert_pretraining", "--labels", '["ltr"]', "--fine-tuning", "--single-target",
        "--path", checkpoint, "--gen-subset", "valid", "--results-path", legacy, "--w2l-decoder", "viterbi",
        "--post-process", "letter", "--max-tokens", "1100000", "--cpu", "--quiet"]) == 0
    return new, legacy


def build_chain(work):
    data = prepare_data(work)
    mfcc = os.path.join(work, "mfcc")
    for split in SPLITS:
        assert tool("dump_mfcc_feature").main([data, split, "1", "0", mfcc]) == 0
    mfcc_labels = cluster(data, mfcc, "labels_mfcc")
    iter1 = pretrain(data, mfcc_labels, 100, os.path.join(work, "iter1"), PRETRAIN_UPDATES)
    layer = os.path.join(work, "layer1")
    for split in SPLITS:
        assert tool("dump_hubert_feature").main([data, split, os.path.join(iter1, "checkpoint_last.pt"), "1", "1",
                                                 "0", layer, "--device", "cpu"]) == 0
    layer_labels = cluster(data, layer, "labels_layer1")
    iter2 = pretrain(data, layer_labels, 50, os.path.join(work, "iter2"), SECOND_UPDATES)
    finetuned = finetune(data, os.path.join(iter2, "checkpoint_last.pt"), os.path.join(work, "finetune"))
    decoded_new, decoded_legacy = decode(data, os.path.join(finetuned, "checkpoint_last.pt"), work)
    return dict(data=data, mfcc=mfcc, mfcc_labels=mfcc_labels, iter1=iter1, layer=layer, layer_labels=layer_labels,
                iter2=iter2, finetuned=finetuned, decoded_new=decoded_new, decoded_legacy=decoded_legacy)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The chain's folders; built once per session even with xdist (the workers share pytest's base temp dir)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.mktemp("e2e")
    work, done = root / "hubert_end_to_end", root / "hubert_end_to_end.json"
    with FileLock(str(root / "hubert_end_to_end.lock")):
        if not done.exists():
            done.write_text(json.dumps(build_chain(str(work))))
    return SimpleNamespace(**json.loads(done.read_text()))


def test_mfcc_labels_have_one_line_per_utterance_and_one_label_per_10ms_frame(chain):
    for split in SPLITS:
        samples = manifest_frames(chain.data, split)
        labels = label_lines(chain.mfcc_labels, split)
        assert len(labels) == len(samples) > 20
        assert [len(line) for line in labels] == [1 + (n - 400) // 160 for n in samples]  # 25 ms / 10 ms frames
    train = np.concatenate([np.array(line) for line in label_lines(chain.mfcc_labels, "train")])
    assert sorted(set(train.tolist())) == list(range(K))
    with open(os.path.join(chain.mfcc_labels, "dict.km.txt")) as f:
        assert f.read().splitlines() == [f"{i} 1" for i in range(K)]


def test_first_iteration_learns_to_predict_the_masked_mfcc_clusters(chain):
    """In 20 updates the tiny model gets about as far as the clusters' prior (the most frequent one, silence, is
    ~29% of the frames): well above chance, with the prediction loss itself falling, not only the penalty."""
    steps = records(chain.iter1, "train_inner")
    assert [r["step"] for r in steps] == list(range(1, PRETRAIN_UPDATES + 1))
    first, last = steps[:3], steps[-3:]
    assert mean("loss", last) < 0.6 * mean("loss", first)
    assert mean("loss_m_0", last) < 0.85 * mean("loss_m_0", first)  # the prediction loss, not only the penalty
    valid = records(chain.iter1, "valid")[-1]
    assert valid["step"] == PRETRAIN_UPDATES and valid["count_m_0"] > 1000
    assert valid["correct_m_0"] > 2 / K and valid["correct_m_0"] > steps[0]["correct_m_0"] + 0.1
    print(f"iteration 1: loss {mean('loss', first):.2f} → {mean('loss', last):.2f}, "
          f"valid correct_m_0 {valid['correct_m_0']:.3f} (chance {1 / K:.3f})")


def test_second_iteration_labels_come_from_layer_features_at_50_hz(chain):
    for split in SPLITS:
        samples = manifest_frames(chain.data, split)
        features = np.load(os.path.join(chain.layer, f"{split}_0_1.npy"))
        assert features.shape == (sum(cnn_frames(n) for n in samples), 64)  # encoder_embed_dim
        layer = label_lines(chain.layer_labels, split)
        assert [len(line) for line in layer] == [cnn_frames(n) for n in samples]
        # the MFCC labels HuBERT trained against at 50 Hz (every second one): related clusters, not the same
        mfcc = label_lines(chain.mfcc_labels, split)
        pairs = [(m[2 * t], x) for m, line in zip(mfcc, layer) for t, x in enumerate(line) if 2 * t < len(m)]
        nmi = normalized_mutual_info_score(*zip(*pairs))
        assert 0.02 < nmi < 0.9, nmi
        print(f"{split}: NMI(MFCC clusters, layer-1 clusters) = {nmi:.3f}")
    steps = records(chain.iter2, "train_inner")  # HuBERT trains on them (their length fits label_rate=50)
    assert [r["step"] for r in steps] == list(range(1, SECOND_UPDATES + 1))
    assert mean("loss_m_0", steps[-3:]) < 0.85 * mean("loss_m_0", steps[:3])
    assert records(chain.iter2, "valid")[-1]["count_m_0"] > 500


def test_ctc_fine_tuning_starts_from_the_second_iteration_and_keeps_its_frozen_cnn(chain):
    pretrained = load_checkpoint_to_cpu(os.path.join(chain.iter2, "checkpoint_last.pt"))
    tuned = load_checkpoint_to_cpu(os.path.join(chain.finetuned, "checkpoint_last.pt"))
    assert tuned["cfg"]["model"]["_name"] == "hubert_ctc" and tuned["cfg"]["task"]["fine_tuning"] is True
    assert tuned["cfg"]["model"]["w2v_path"] == os.path.join(chain.iter2, "checkpoint_last.pt")
    prefix = "w2v_encoder.w2v_model."
    cnn = "feature_extractor.conv_layers.0.0.weight"  # feature_grad_mult: 0.0 in base_10h.yaml
    assert torch.equal(tuned["model"][prefix + cnn], pretrained["model"][cnn])
    layer = "encoder.layers.0.fc1.weight"
    assert not torch.equal(tuned["model"][prefix + layer], pretrained["model"][layer])
    with open(os.path.join(CORPUS, "dict.ltr.txt")) as f:
        letters = len(f.read().splitlines())
    assert tuned["model"]["w2v_encoder.proj.weight"].shape[0] == 4 + letters  # fairseq's 4 special symbols
    steps = records(chain.finetuned, "train_inner")
    assert [r["step"] for r in steps] == list(range(1, 11))
    per_letter = [r["loss"] * r["nsentences"] / r["ntokens"] for r in steps]  # sentence_avg: loss per utterance
    assert sum(per_letter[-3:]) < 0.7 * sum(per_letter[:3])
    assert "wer" in records(chain.finetuned, "valid")[-1]


def test_both_decoding_front_ends_write_the_same_hypotheses_and_a_wer_jiwer_agrees_with(chain):
    def read(folder, name):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return f.read().splitlines()

    legacy = {name: read(chain.decoded_legacy, f"{name}-checkpoint_last.pt-valid.txt") for name in DECODED}
    new = {name: read(chain.decoded_new, name) for name in DECODED}
    assert new == legacy
    count = len(manifest_frames(chain.data, "valid"))
    split = [re.fullmatch(r"(.*) \(None-(\d+)\)", line).groups() for line in new["ref.word"]]
    assert sorted(int(i) for _, i in split) == list(range(count))
    with open(os.path.join(chain.data, "valid.wrd")) as f:
        words = f.read().splitlines()
    assert [text for text, _ in split] == [words[int(i)] for _, i in split]
    hypotheses = [line.rsplit(" (None-", 1)[0] for line in new["hypo.word"]]
    wer_files = [name for name in os.listdir(chain.decoded_new) if name.startswith("wer.")]
    assert len(wer_files) == 1  # infer_viterbi.yaml's unique_wer_file
    logged = float(re.match(r"WER: ([\d.]+)\n", "\n".join(read(chain.decoded_new, wer_files[0]))).group(1))
    expected = 100 * jiwer.wer([text for text, _ in split], hypotheses)
    assert logged == pytest.approx(expected, abs=1e-3)
    print(f"valid WER {logged:.2f} from both front ends over {count} utterances")
