"""`make demo` pieces: the demo yamls compose and build the tiny models, fine-tuning can start from random weights
with the same config, scripts/plot.py draws every picture from a tiny pretrained + fine-tuned pair on corpus
speech, and the demo driver's letter error rate and WER table read infer.py's result files.
(The whole demo is not run here: it takes about ten minutes.)"""

import glob
import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

import fairseq_lite  # noqa: F401
from fairseq_lite.data.labels import write_label_files
from fairseq_lite.data.manifest import write_manifest
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.models import build_model
from fairseq_lite.tasks import setup_task
from fairseq_lite.training.checkpoint import load_checkpoint_file
from fairseq_lite.training.train import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "demo", "corpus")
sys.path.insert(0, os.path.join(REPO, "scripts"))
import make_speech_corpus  # noqa: E402
import plot  # noqa: E402
import run_demo  # noqa: E402


def demo_config(kind, overrides):
    return finalize_config(compose_config(os.path.join(REPO, "config", kind), "demo", overrides))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Manifests, letter labels and dictionary for the 4 shortest train and 3 shortest test utterances."""
    folder = tmp_path_factory.mktemp("data")
    for split, count in (("train", 4), ("test", 3)):
        root = os.path.join(CORPUS, split)
        files = sorted(glob.glob(os.path.join(root, "*", "*", "*.flac")))
        shortest = sorted(files, key=lambda f: (sf.info(f).frames, f))[:count]
        write_manifest(str(folder / f"{split}.tsv"), root, [(os.path.relpath(f, root), sf.info(f).frames)
                                                            for f in shortest])
        texts = {}
        for trans in glob.glob(os.path.join(root, "*", "*", "*.trans.txt")):
            for line in open(trans):
                utt, text = line.rstrip("\n").split(" ", 1)
                texts[utt] = text
        write_label_files([texts[os.path.basename(f)[:-5]] for f in shortest], str(folder), split)
    (folder / "dict.ltr.txt").write_text(open(os.path.join(CORPUS, "dict.ltr.txt")).read())
    return folder


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory):
    """A demo.yaml pretraining run and a demo.yaml fine-tuning run of 2 updates each, both with metrics.jsonl."""
    out = tmp_path_factory.mktemp("runs")
    quiet = ["common.log_format=none", "optimization.max_update=2", f"task.data={data}"]
    train_main(demo_config("pretraining", quiet + [f"checkpoint.save_dir={out / 'pre'}"]))
    pretrained = out / "pre" / "checkpoint_last.pt"
    train_main(demo_config("finetuning", quiet + [
        f"checkpoint.save_dir={out / 'ft'}", f"model.w2v_path={pretrained}", "dataset.valid_subset=test",
        "dataset.validate_interval_updates=1"]))
    return out


def test_pretraining_yaml_builds_the_tiny_model():
    cfg = demo_config("pretraining", ["task.data=/x", "checkpoint.save_dir=/y"])
    assert cfg.task._name == "audio_pretraining" and cfg.criterion.infonce is True
    assert cfg.common.cpu is True and cfg.dataset.disable_validation is True
    model = build_model(cfg.model)
    assert model.cfg.encoder_embed_dim == 128 and len(model.encoder.layers) == 4
    frames = model.feature_extractor(torch.zeros(1, 16000)).shape[-1]
    assert frames == 49  # fairseq's 20 ms frame rate: the CNN strides are BASE's
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6


def test_finetuning_yaml_needs_its_paths_and_follows_the_ctc_recipe():
    cfg = demo_config("finetuning", ["task.data=/x", "checkpoint.save_dir=/y", "model.w2v_path=/z.pt"])
    assert (cfg.task._name, cfg.task.labels, cfg.model._name, cfg.criterion._name) == (
        "audio_finetuning", "ltr", "wav2vec_ctc", "ctc")
    assert cfg.checkpoint.best_checkpoint_metric == "wer" and cfg.dataset.valid_subset == "valid"
    assert cfg.lr_scheduler._name == "tri_stage" and cfg.optimization.sentence_avg is True
    unset = compose_config(os.path.join(REPO, "config", "finetuning"), "demo", [])
    assert OmegaConf.is_missing(unset.model, "w2v_path") and OmegaConf.is_missing(unset.task, "data")


def test_finetuning_from_random_weights_keeps_the_architecture(data, checkpoints):
    pretrained = str(checkpoints / "pre" / "checkpoint_last.pt")
    overrides = [f"task.data={data}", "checkpoint.save_dir=/y", f"model.w2v_path={pretrained}"]
    task = setup_task(demo_config("finetuning", overrides).task)
    loaded = task.build_model(demo_config("finetuning", overrides).model)
    scratch = task.build_model(demo_config("finetuning", overrides + ["model.no_pretrained_weights=true"]).model)
    key = "w2v_encoder.w2v_model.encoder.layers.0.fc1.weight"
    state = torch.load(pretrained, weights_only=False)["model"]
    assert torch.equal(loaded.state_dict()[key], state["encoder.layers.0.fc1.weight"])
    assert scratch.state_dict()[key].shape == loaded.state_dict()[key].shape
    assert not torch.equal(scratch.state_dict()[key], loaded.state_dict()[key])


def test_plot_writes_every_picture(data, checkpoints, tmp_path):
    finetuned = str(checkpoints / "ft" / "checkpoint_best.pt")
    written = plot.main([
        "--out", str(tmp_path), "--metrics", f"pretraining={checkpoints / 'pre' / 'metrics.jsonl'}",
        str(checkpoints / "ft" / "metrics.jsonl"), "--pretrained", str(checkpoints / "pre" / "checkpoint_last.pt"),
        "--finetuned", finetuned, "--data", str(data), "--subset", "test", "--neighbour-queries", "2",
    ])
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["cosine_similarity.png", "embeddings_pca.png", "embeddings_tsne.png",
                     "nearest_neighbours.png", "spectrogram.png", "training_curves.png"]
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    neighbours = (tmp_path / "nearest_neighbours.txt").read_text().splitlines()
    assert len(neighbours) == 2 * (1 + 2)  # 2 queries, each with its 2 other utterances (3 asked, 2 exist)


def test_plot_curves_takes_train_and_validation_records(tmp_path):
    records = [{"tag": "train_inner", "step": s, "epoch": 1, "loss": 5.0 - s, "accuracy": 0.1 * s, "lr": 1e-3,
                "prob_perplexity": 50.0, "code_perplexity": 40.0} for s in (1, 2, 3)]
    records += [{"tag": "train", "step": 3, "epoch": 1, "loss": 9.9}, {"tag": "valid", "step": 3, "epoch": 1,
                                                                     "wer": 80.0, "uer": 40.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{\"half")
    assert len(plot.read_metrics(str(path))) == 5
    assert plot.plot_curves({"run": plot.read_metrics(str(path))}, str(tmp_path)).endswith("training_curves.png")


def test_tsne_separates_two_clusters():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(40, 8, generator=generator)
    b = torch.randn(40, 8, generator=generator) + 12.0
    y = plot.tsne(torch.cat([a, b]).numpy(), perplexity=10, iterations=300)
    centre_a, centre_b = y[:40].mean(0), y[40:].mean(0)
    spread = max(abs(y[:40] - centre_a).max(), abs(y[40:] - centre_b).max())
    assert ((centre_a - centre_b) ** 2).sum() ** 0.5 > 2 * spread


def test_pca_finds_the_main_axis():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=generator) * torch.tensor([10.0, 1, 1, 1, 1])
    projected = plot.pca(x.numpy(), 1)[:, 0]
    assert abs(torch.corrcoef(torch.stack([torch.from_numpy(projected), x[:, 0].double()]))[0, 1]) > 0.99


def test_driver_reads_infer_result_files(tmp_path):
    checkpoint = "checkpoint_best.pt"
    (tmp_path / f"ref.units-{checkpoint}-test.txt").write_text("A B | C | (None-0)\nD | (None-1)\n")
    (tmp_path / f"hypo.units-{checkpoint}-test.txt").write_text("A | C | (None-0)\nD | (None-1)\n")
    assert run_demo.letter_error_rate(str(tmp_path), checkpoint) == pytest.approx(100 * 1 / 7)
    table = run_demo.wer_table([{"model": "m", "init": "pretrained", "decoder": "viterbi", "test": (12.345, 3.0),
                                 "unseen": (20.0, 5.5)}], ["test", "unseen"])
    assert table.splitlines()[0] == ("| model | fine-tuned from | decoder | test WER % | test letter ER % |"
                                     " unseen WER % | unseen letter ER % |")
    assert table.splitlines()[-1] == "| m | pretrained | viterbi | 12.35 | 3.00 | 20.00 | 5.50 |"
    assert run_demo.WER_LINE.findall("2026 | INFO | fairseq_lite.infer | WER: 7.5\n") == ["7.5"]


def test_driver_help_runs_as_a_script():
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "run_demo.py"), "--help"],
                            capture_output=True, text=True, check=True)
    assert "--pretrain-updates" in result.stdout


def test_whole_demo_runs_end_to_end_with_two_updates_per_training(tmp_path):
    """`make demo`'s driver on the bundled corpus, every step a real command, budgets cut to 2 updates and the
    unlabelled pool and unseen-voices split to one utterance per speaker (skipped without espeak-ng)."""
    out = tmp_path / "demo_out"
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "run_demo.py"), "--out", str(out),
                             "--pretrain-updates", "2", "--finetune-updates", "2", "--no-plots",
                             "--pool-utts", "1", "--unseen-utts", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    report = (out / "results.md").read_text().splitlines()
    rows = [line for line in report if line.startswith("| finetune")]
    assert len(rows) == 4  # {pretrained, random weights} × {viterbi, kenlm}
    subsets = ["test"] + (["unseen"] if shutil.which("espeak-ng") else [])
    assert report[0].count("letter ER %") == len(subsets) and all(row.count("|") == 4 + 2 * len(subsets)
                                                                  for row in rows)
    for init in ("finetune", "finetune_scratch"):  # trained side by side, each logging to OUT/<name>.log
        assert "done training" in (out / f"{init}.log").read_text()
        for decoder in ("viterbi", "kenlm"):
            for subset in subsets:
                assert (out / "results" / f"{init}-{decoder}" / f"hypo.word-checkpoint_best.pt-{subset}.txt").is_file()
    if shutil.which("espeak-ng"):
        pool = (out / "pool_data" / "train.tsv").read_text().splitlines()
        assert len(pool) == 1 + len(make_speech_corpus.POOL_SPEAKERS)
        assert any(line.startswith("- pool:") for line in report)
    assert "- finetune + finetune_scratch (side by side):" in "\n".join(report)


def hubert_demo_config(kind, overrides):
    return finalize_config(compose_config(os.path.join(REPO, "config", kind), "hubert_demo", overrides))


def test_hubert_demo_yamls_keep_the_wav2vec2_demos_sizes_and_budget():
    """`run_demo.py --model hubert` trains at the wav2vec 2.0 demo's budget: same sizes, updates, batch and lr."""
    paths = ["task.data=/x", "task.label_dir=/l", "checkpoint.save_dir=/y"]
    pre, w2v_pre = hubert_demo_config("pretraining", paths), demo_config("pretraining", paths[::2])
    assert (pre.task._name, pre.model._name, pre.criterion._name) == ("hubert_pretraining", "hubert", "hubert")
    assert list(pre.task.labels) == ["km"] and pre.task.label_rate == pre.model.label_rate == 100
    for key in ("conv_feature_layers", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                "encoder_attention_heads", "conv_pos", "conv_pos_groups", "final_dim", "feature_grad_mult"):
        assert getattr(pre.model, key) == getattr(w2v_pre.model, key), key
    ft = hubert_demo_config("finetuning", paths + ["model.w2v_path=/z.pt"])
    w2v_ft = demo_config("finetuning", paths[::2] + ["model.w2v_path=/z.pt"])
    assert (ft.task._name, ft.task.fine_tuning, ft.task.single_target, list(ft.task.labels), ft.model._name) == (
        "hubert_pretraining", True, True, ["ltr"], "hubert_ctc")
    for (new, old) in ((pre, w2v_pre), (ft, w2v_ft)):
        assert new.optimization.max_update == old.optimization.max_update
        assert list(new.optimization.lr) == list(old.optimization.lr)
        assert new.dataset.max_tokens == old.dataset.max_tokens and new.lr_scheduler == old.lr_scheduler
        assert new.distributed_training == old.distributed_training  # the ranks that share the batch
    for key in ("mask_prob", "mask_length", "mask_channel_prob", "mask_channel_length", "feature_grad_mult"):
        assert getattr(ft.model, key) == getattr(w2v_ft.model, key), key
    assert run_demo.parse_args(["--model", "hubert"]).out == os.path.join(REPO, "demo_out", "hubert")
    assert run_demo.parse_args([]).out == os.path.join(REPO, "demo_out")
    assert "--pretrained" not in run_demo.plot_arguments("hubert", "/o", "/d", "/p", "/f", "/s")
    assert "--pretrained" in run_demo.plot_arguments("wav2vec2", "/o", "/d", "/p", "/f", "/s")


def test_hubert_demo_commands_label_pretrain_and_fine_tune(data, tmp_path):
    """The driver's simple_kmeans commands (their mains run here) label train; hubert_demo.yaml pretrains on the
    labels and hubert_demo.yaml fine-tunes hubert_ctc from that checkpoint, 2 updates each."""
    feat, labels = tmp_path / "feat", tmp_path / "km"
    commands = run_demo.label_commands(sys.executable, str(data), str(feat), str(feat / "km.bin"), str(labels), 5)
    assert [os.path.basename(argv[1]) for argv in commands] == [
        "dump_mfcc_feature.py", "learn_kmeans.py", "dump_km_label.py", "write_km_dict.py"]
    for argv in commands:
        assert runpy.run_path(os.path.join(REPO, argv[1]))["main"](argv[2:]) == 0
    frames = [int(n) for n in (feat / "train_0_1.len").read_text().split()]
    km = (labels / "train.km").read_text().splitlines()
    assert [len(line.split()) for line in km] == frames and len(frames) == 4  # one 100 Hz label per MFCC frame
    assert (labels / "dict.km.txt").read_text() == "".join(f"{i} 1\n" for i in range(5))

    pre_labels, ft_labels = run_demo.label_overrides("hubert", str(data), str(labels))
    assert run_demo.label_overrides("wav2vec2", str(data), str(labels)) == ([], [])
    quiet = ["common.log_format=none", "optimization.max_update=2", f"task.data={data}"]
    train_main(hubert_demo_config("pretraining", quiet + pre_labels + [f"checkpoint.save_dir={tmp_path / 'pre'}"]))
    pretrained = load_checkpoint_file(str(tmp_path / "pre" / "checkpoint_last.pt"))
    assert pretrained["cfg"]["model"]["_name"] == "hubert"
    assert pretrained["model"]["final_proj.weight"].shape[0] == 64  # final_dim (untied: 1 label set)
    train_main(hubert_demo_config("finetuning", quiet + ft_labels + [
        f"checkpoint.save_dir={tmp_path / 'ft'}", f"model.w2v_path={tmp_path / 'pre' / 'checkpoint_last.pt'}",
        "dataset.valid_subset=test", "dataset.validate_interval_updates=1"]))
    finetuned = load_checkpoint_file(str(tmp_path / "ft" / "checkpoint_best.pt"))
    assert finetuned["cfg"]["model"]["_name"] == "hubert_ctc"
    key = "feature_extractor.conv_layers.0.0.weight"  # frozen (feature_grad_mult 0): still the pretrained CNN
    assert torch.equal(finetuned["model"][f"w2v_encoder.w2v_model.{key}"], pretrained["model"][key])
