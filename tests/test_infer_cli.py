"""examples/speech_recognition/infer.py end to end on a tiny fine-tuned wav2vec_ctc checkpoint and real audio files.

The checkpoint is trained for two updates by the training loop (fairseq's checkpoint layout, dictionary in
task_state), then its output layer is sharpened so that greedy decoding emits letters rather than blanks.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_lite.cli import infer
from fairseq_lite.data.labels import dictionary_from_labels, letters
from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.decoding import edit_distance
from fairseq_lite.decoding.arpa import estimate, write_arpa
from fairseq_lite.errors import ConfigError
from fairseq_lite.file_io import atomic_save
from fairseq_lite.training.checkpoint import load_checkpoint_file
from fairseq_lite.training.train import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16_000
TEXTS = ["THE CAT SEES THE DOG", "A DOG SEES A CAT", "THE DOG", "A CAT SEES THE DOG", "THE CAT", "SEES A DOG"]
LINE = re.compile(r"^(.*) \(None-(\d+)\)$")
W2V_ARGS = {
    "task": {"_name": "audio_pretraining", "normalize": False},
    "model": {"_name": "wav2vec2", "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
              "encoder_attention_heads": 4,
              "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
              "conv_pos": 16, "conv_pos_groups": 4, "final_dim": 16},
}


def write_split(root, split, waves, texts):
    with open(root / f"{split}.tsv", "w") as f:
        f.write(f"{root}\n")
        for name, wav in waves:
            sf.write(root / name, wav, RATE)
            f.write(f"{name}\t{len(wav)}\n")
    (root / f"{split}.ltr").write_text("".join(letters(t) + "\n" for t in texts))
    (root / f"{split}.wrd").write_text("".join(t + "\n" for t in texts))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data folder (dev: six utterances, long: one 12 s file), a checkpoint, a KenLM ARPA and a lexicon."""
    root = tmp_path_factory.mktemp("infer")
    rng = np.random.default_rng(0)
    waves = []
    for i, text in enumerate(TEXTS):
        t = np.arange(int(RATE * (0.6 + 0.12 * len(text.split())))) / RATE
        wav = 0.3 * np.sin(2 * np.pi * (180 + 30 * i) * t) + rng.normal(0, 0.05, len(t))
        waves.append((f"u{i}.wav", wav.astype(np.float32)))
    write_split(root, "dev", waves, TEXTS)
    t = np.arange(12 * RATE) / RATE
    # amplitude-modulated tone: the random model's group norm and attention see similar statistics in every
    # window, so what chunking changes is the stitching (a trained model is robust to the rest as well)
    long_wav = 0.3 * np.sin(2 * np.pi * 200 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 0.05, len(t))
    write_split(root, "long", [("long.wav", long_wav.astype(np.float32))], [" ".join(TEXTS)])
    dictionary_from_labels(letters(t) for t in TEXTS).save(root / "dict.ltr.txt")

    cfg = finalize_config({
        "common": {"seed": 1, "log_interval": 1, "cpu": True},
        "task": {"_name": "audio_finetuning", "data": str(root), "labels": "ltr"},
        "dataset": {"max_tokens": 64000, "num_workers": 0, "required_batch_size_multiple": 1,
                    "train_subset": "dev", "valid_subset": "dev"},
        "optimization": {"max_update": 2, "lr": [1e-4]},
        "checkpoint": {"save_dir": str(root / "ckpt"), "no_epoch_checkpoints": True},
        "model": {"_name": "wav2vec_ctc", "w2v_path": "unused.pt", "w2v_args": W2V_ARGS, "mask_prob": 0.0,
                  "mask_channel_prob": 0.0},
        "criterion": {"_name": "ctc"},
        "optimizer": {"_name": "adam"},
        "lr_scheduler": {"_name": "fixed"},
    })
    train_main(cfg)
    path = root / "ckpt" / "checkpoint_last.pt"
    state = load_checkpoint_file(str(path))
    model = state["model"]
    model["w2v_encoder.proj.weight"] *= 30.0  # confident letters
    model["w2v_encoder.proj.bias"][1:4] = -50.0  # <pad>, </s>, <unk> never win
    atomic_save(state, str(path))
    os.remove(root / "dict.ltr.txt")  # the checkpoint's task_state holds the dictionary

    log_probs, backoffs = estimate([t.split() for t in TEXTS], 3)
    with open(root / "lm.arpa", "w") as f:
        write_arpa(log_probs, backoffs, f)
    words = sorted({w for t in TEXTS for w in t.split()})
    (root / "lexicon.lst").write_text("".join(f"{w}\t{' '.join(w)} |\n" for w in words))
    return root, path


def command(root, path, results, *extra, subset="dev"):
    """The commands.md evaluation command (paths aside) with ``extra`` decoder flags."""
    return [str(root), "--task", "audio_finetuning", "--nbest", "1", "--path", str(path), "--gen-subset", subset,
            "--results-path", str(results), *extra, "--criterion", "ctc", "--labels", "ltr",
            "--max-tokens", "4000000", "--post-process", "letter"]


def read_results(results, path, subset="dev"):
    """{prefix: {id: text}} of the four result files, checking their names and the line format."""
    out = {}
    for prefix in ("hypo.word", "hypo.units", "ref.word", "ref.units"):
        lines = (results / f"{prefix}-{os.path.basename(path)}-{subset}.txt").read_text().splitlines()
        matches = [LINE.match(line) for line in lines]
        assert all(matches), lines
        out[prefix] = {int(m.group(2)): m.group(1) for m in matches}
    return out


def logged_wer(caplog):
    found = [r.getMessage() for r in caplog.records if r.getMessage().startswith("WER: ")]
    assert len(found) == 1
    return float(found[0].split()[1])


def test_viterbi_writes_fairseq_files_with_a_wer_that_jiwer_agrees_with(setup, tmp_path, caplog):
    root, path = setup
    caplog.set_level("INFO")
    assert infer.main(command(root, path, tmp_path, "--w2l-decoder", "viterbi")) == 0
    res = read_results(tmp_path, path)
    ids = sorted(res["ref.word"])
    assert ids == list(range(len(TEXTS)))
    assert [res["ref.word"][i] for i in ids] == TEXTS
    assert [res["ref.units"][i] for i in ids] == [letters(t) for t in TEXTS]
    for i in ids:
        assert res["hypo.word"][i] == res["hypo.units"][i].replace(" ", "").replace("|", " ").strip()
    assert any(res["hypo.word"][i] for i in ids)
    expected = 100 * jiwer.wer([res["ref.word"][i] for i in ids], [res["hypo.word"][i] for i in ids])
    assert logged_wer(caplog) == pytest.approx(expected)
    messages = [r.getMessage() for r in caplog.records]
    assert any(re.match(r"\| Processed 6 sentences \(\d+ tokens\) in [\d.]+s", m) for m in messages)
    assert "| Generate dev with beam=5" in messages

    # word timestamps: one JSON line per utterance and one CTM line per word, inside the audio
    name = f"{os.path.basename(path)}-dev"
    records = {r["id"]: r for r in map(json.loads, (tmp_path / f"results-{name}.jsonl").read_text().splitlines())}
    ctm = [line.split() for line in (tmp_path / f"timestamps-{name}.ctm").read_text().splitlines()]
    assert sorted(records) == ids
    assert len(ctm) == sum(len(r["words"]) for r in records.values())
    for i, record in records.items():
        assert record["hypo"] == res["hypo.word"][i] and record["ref"] == TEXTS[i]
        assert [w["word"] for w in record["words"]] == record["hypo"].split()
        duration = sf.info(record["audio"]).duration
        times = [(w["start"], w["end"]) for w in record["words"]]
        assert all(0 <= s < e <= duration + 0.03 for s, e in times)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(times, times[1:]))
        mine = [c for c in ctm if c[0] == f"None-{i}"]
        assert [(c[4], float(c[2])) for c in mine] == [(w["word"], pytest.approx(w["start"], abs=1e-3))
                                                       for w in record["words"]]


def test_commands_md_kenlm_command_runs_as_written(setup, tmp_path):
    root, path = setup
    script = os.path.join(REPO, "examples", "speech_recognition", "infer.py")
    flags = ["--w2l-decoder", "kenlm", "--lm-model", str(root / "lm.arpa"), "--lm-weight", "2", "--word-score",
             "-1", "--sil-weight", "0", "--lexicon", str(root / "lexicon.lst")]
    run = subprocess.run([sys.executable, script, *command(root, path, tmp_path, *flags)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert re.search(r"\| INFO \| fairseq_lite.infer \| WER: [\d.]+$", run.stdout, re.M)
    res = read_results(tmp_path, path)
    vocabulary = {w for t in TEXTS for w in t.split()}
    hypos = [res["hypo.word"][i] for i in sorted(res["hypo.word"])]
    assert all(set(h.split()) <= vocabulary for h in hypos) and any(hypos)
    expected = 100 * jiwer.wer(TEXTS, hypos)
    assert float(re.search(r"WER: ([\d.]+)", run.stdout).group(1)) == pytest.approx(expected)

    # fairseq's README leaves out --lexicon; fairseq then fails with an assertion, here with one line
    no_lexicon = subprocess.run([sys.executable, script, *command(root, path, tmp_path, *flags[:-2])],
                                capture_output=True, text=True, timeout=300)
    assert no_lexicon.returncode != 0
    assert no_lexicon.stderr.strip().splitlines() == [
        "error: --w2l-decoder kenlm needs --lexicon for a word LM, or --unit-lm for lexicon-free decoding with an "
        "LM over the output units"]


@pytest.mark.parametrize("decoder", ["viterbi", "kenlm"])
def test_dump_then_load_emissions_gives_the_same_hypotheses(setup, tmp_path, decoder):
    root, path = setup
    flags = ["--w2l-decoder", decoder]
    if decoder == "kenlm":
        flags += ["--lm-model", str(root / "lm.arpa"), "--lexicon", str(root / "lexicon.lst"), "--lm-weight", "1"]
    dump = tmp_path / "emissions.npz"
    assert infer.main(command(root, path, tmp_path / "direct", *flags)) == 0
    assert infer.main(command(root, path, tmp_path / "unused", *flags, "--dump-emissions", str(dump))) == 0
    assert not (tmp_path / "unused").exists()  # dumping stops before decoding, as in fairseq
    assert infer.main(command(root, path, tmp_path / "loaded", *flags, "--load-emissions", str(dump))) == 0
    direct, loaded = read_results(tmp_path / "direct", path), read_results(tmp_path / "loaded", path)
    assert direct["hypo.units"] == loaded["hypo.units"] and direct["hypo.word"] == loaded["hypo.word"]
    assert int(np.load(dump)["frame_stride"]) == 320  # the dump keeps the model's frame stride for timestamps
    data = tmp_path / "data"  # without a checkpoint the dictionary comes from the data folder
    data.mkdir()
    for name in ("dev.tsv", "dev.ltr", "dev.wrd"):
        shutil.copy(root / name, data / name)
    load_checkpoint_file(str(path))["task_state"]["target_dictionary"].save(str(data / "dict.ltr.txt"))
    no_model = command(data, path, tmp_path / "alone", *flags, "--load-emissions", str(dump))
    at = no_model.index("--path")
    del no_model[at:at + 2]
    assert infer.main(no_model) == 0
    [direct_ctm] = (tmp_path / "direct").glob("timestamps-*.ctm")
    [alone_ctm] = (tmp_path / "alone").glob("timestamps-*.ctm")
    assert alone_ctm.read_text() == direct_ctm.read_text()


def test_chunked_decoding_matches_unchunked_on_a_12_second_file(setup, tmp_path):
    root, path = setup
    flags = ["--w2l-decoder", "viterbi"]
    assert infer.main(command(root, path, tmp_path / "whole", *flags, subset="long")) == 0
    assert infer.main(command(root, path, tmp_path / "chunked", *flags, "--chunk-seconds", "4", "--chunk-overlap",
                              "1.5", subset="long")) == 0
    whole = read_results(tmp_path / "whole", path, "long")["hypo.units"][0].split()
    chunked = read_results(tmp_path / "chunked", path, "long")["hypo.units"][0].split()
    assert len(whole) > 100
    assert edit_distance(whole, chunked) <= 0.05 * len(whole)  # a random model: near-ties flip


def test_bad_inputs_fail_with_one_line(setup, tmp_path):
    root, path = setup
    pickled = tmp_path / "fairseq_dump.npy"
    np.save(pickled, np.array([np.zeros((3, 4)), np.zeros((5, 4))], dtype=object), allow_pickle=True)
    with pytest.raises(Exception, match="not a fairseq_lite emissions file"):
        infer.main(command(root, path, tmp_path, "--w2l-decoder", "viterbi", "--load-emissions", str(pickled)))
    with pytest.raises(Exception, match="choose a decoder"):
        infer.main(command(root, path, tmp_path))
    with pytest.raises(Exception, match=r"checkpoint .*missing.pt does not exist"):
        infer.main(command(root, tmp_path / "missing.pt", tmp_path, "--w2l-decoder", "viterbi"))


def test_unit_lm_and_fairseqlm_decoders_through_infer(setup, tmp_path):
    from test_infer_language_model import LM_YAML, write_text

    from fairseq_lite.cli import hydra_train

    root, path = setup
    # lexicon-free: a character KenLM over the letters of the transcripts
    log_probs, backoffs = estimate([letters(t).split() for t in TEXTS], 4)
    with open(tmp_path / "char.arpa", "w") as f:
        write_arpa(log_probs, backoffs, f)
    flags = ["--w2l-decoder", "kenlm", "--unit-lm", "--lm-model", str(tmp_path / "char.arpa"), "--lm-weight", "1"]
    assert infer.main(command(root, path, tmp_path / "unit", *flags)) == 0
    unit = read_results(tmp_path / "unit", path)
    assert all(unit["hypo.word"][i] == unit["hypo.units"][i].replace(" ", "").replace("|", " ").strip()
               for i in unit["hypo.word"])

    # fairseqlm: a transformer_lm trained by fairseq-hydra-train on the transcripts
    lm_data = tmp_path / "lm_data"
    write_text(lm_data, TEXTS * 2)
    (tmp_path / "lm.yaml").write_text(LM_YAML.format(data=lm_data, save_dir=tmp_path / "lm").replace(
        "max_update: 120", "max_update: 20"))
    assert hydra_train.main(["--config-dir", str(tmp_path), "--config-name", "lm"]) == 0
    flags = ["--w2l-decoder", "fairseqlm", "--lm-model", str(tmp_path / "lm" / "checkpoint_last.pt"),
             "--lexicon", str(root / "lexicon.lst"), "--lm-weight", "1", "--beam", "10"]
    assert infer.main(command(root, path, tmp_path / "fairseqlm", *flags)) == 0
    hypos = read_results(tmp_path / "fairseqlm", path)["hypo.word"].values()
    vocabulary = {w for t in TEXTS for w in t.split()}
    assert all(set(h.split()) <= vocabulary for h in hypos) and any(hypos)


def test_ctc_checkpoint_saved_under_audio_pretraining_takes_the_data_folders_dictionary(setup, tmp_path):
    """fairseq issue #4691: such files store no target dictionary; infer.py builds audio_finetuning itself."""
    from fairseq_lite.data.dictionary import Dictionary

    root, path = setup
    state = load_checkpoint_file(str(path))
    dictionary = state["task_state"]["target_dictionary"]
    state["task_state"] = {}
    state["cfg"]["task"] = {"_name": "audio_pretraining", "data": "/elsewhere", "normalize": False}
    old = tmp_path / "wav2vec2_vox_960h_new.pt"
    atomic_save(state, str(old))
    data = tmp_path / "data"
    data.mkdir()
    for name in ("dev.tsv", "dev.ltr", "dev.wrd"):
        (data / name).write_text((root / name).read_text())
    with pytest.raises(Exception, match="dict.ltr.txt does not exist"):
        infer.main(command(data, old, tmp_path / "res", "--w2l-decoder", "viterbi"))
    dictionary.save(str(data / "dict.ltr.txt"))
    assert Dictionary.load(str(data / "dict.ltr.txt")) == dictionary
    assert infer.main(command(data, old, tmp_path / "res", "--w2l-decoder", "viterbi")) == 0
    assert infer.main(command(root, path, tmp_path / "ours", "--w2l-decoder", "viterbi")) == 0
    assert read_results(tmp_path / "res", old)["hypo.units"] == read_results(tmp_path / "ours", path)["hypo.units"]


class PickledExtra:
    """A class outside fairseq's allow-list, pickled into a checkpoint's extra_state."""


def test_pretraining_checkpoint_is_refused_and_untrusted_globals_need_trust(setup, tmp_path, monkeypatch):
    root, path = setup
    state = load_checkpoint_file(str(path))
    pretraining = dict(state, cfg=dict(state["cfg"], model=W2V_ARGS["model"]))
    atomic_save(pretraining, str(tmp_path / "pretrained.pt"))
    with pytest.raises(Exception, match=r"pretrained.pt holds a 'wav2vec2' model, not a fine-tuned CTC model"):
        infer.main(command(root, tmp_path / "pretrained.pt", tmp_path, "--w2l-decoder", "viterbi"))

    atomic_save(dict(state, extra_state=dict(state["extra_state"], note=PickledExtra())), str(tmp_path / "odd.pt"))
    odd = command(root, tmp_path / "odd.pt", tmp_path / "out", "--w2l-decoder", "viterbi", "--quiet")
    with pytest.raises(Exception, match=r"pickled 'test_infer_cli.PickledExtra'.*--trust-checkpoint"):
        infer.main(odd)
    infer.main(odd + ["--trust-checkpoint"])
    assert (tmp_path / "out" / "hypo.word-odd.pt-dev.txt").is_file()
    monkeypatch.setenv("FAIRSEQ_LITE_TRUST_CHECKPOINT", "1")  # the same for every command, e.g. model.w2v_path
    infer.main(odd)


def test_bf16_autocast_on_cpu_emits_close_to_fp32_and_fp16_needs_a_gpu(setup, tmp_path):
    """``--bf16`` runs the forward under CPU bf16 autocast (emissions differ from fp32 at bf16's resolution and
    decode the same); ``--fp16`` without CUDA is a one-line error, not fairseq's CPU ``.half()``."""
    root, path = setup
    dumps = {}
    for precision in ("fp32", "bf16"):
        dumps[precision] = tmp_path / f"{precision}.npz"
        flags = ["--bf16"] if precision == "bf16" else []
        assert infer.main(command(root, path, tmp_path / "unused", "--cpu", *flags, "--w2l-decoder", "viterbi",
                                  "--dump-emissions", str(dumps[precision]))) == 0
    fp32, bf16 = (np.load(dumps[p])["emissions"] for p in ("fp32", "bf16"))
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    gap = np.abs(bf16 - fp32).max()
    assert 0 < gap < 0.05 * np.abs(fp32).max()  # bf16 really ran, and stayed close
    assert (bf16.argmax(-1) == fp32.argmax(-1)).mean() > 0.95
    for results, flags in ((tmp_path / "fp32", []), (tmp_path / "bf16", ["--bf16"])):
        assert infer.main(command(root, path, results, "--cpu", *flags, "--w2l-decoder", "viterbi")) == 0
    hypos = {p: read_results(tmp_path / p, path)["hypo.units"] for p in ("fp32", "bf16")}
    edits = sum(edit_distance(hypos["bf16"][i].split(), hypos["fp32"][i].split()) for i in hypos["fp32"])
    assert edits <= 0.1 * sum(len(h.split()) for h in hypos["fp32"].values())  # an untrained model: near ties
    if torch.cuda.is_available():  # fp16 autocast on the GPU decodes like fp32 too
        assert infer.main(command(root, path, tmp_path / "fp16", "--fp16", "--w2l-decoder", "viterbi")) == 0
        fp16 = read_results(tmp_path / "fp16", path)["hypo.units"]
        assert sum(edit_distance(fp16[i].split(), hypos["fp32"][i].split()) for i in fp16) <= edits + 2
    else:
        with pytest.raises(ConfigError, match="--fp16 needs a CUDA GPU.*use --bf16"):
            infer.main(command(root, path, tmp_path / "fp16", "--fp16", "--w2l-decoder", "viterbi"))
