"""MMS decoding per language (issue 16): a 20-update adapter fine-tune on demo speech with three "languages" (three
demo speakers' corpora, ``task.multi_corpus_keys=eng,fra,swh``) changes only the adapters and the output layer and
lowers the CTC loss; infer.py and new/infer.py decode it with ``--lang eng`` / ``lang=eng`` as with
``--gen-subset eng:dev`` (the keys come from the checkpoint), each language runs its own adapters, a
``dict/<lang>.txt`` beside the data is that language's dictionary, and fairseq's ``mms_infer.py`` command
transcribes audio files as new/infer.py does, with one-line errors."""

import importlib.util
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_lite.cli import hydra_infer, hydra_train, infer
from fairseq_lite.cli.common import run_cli
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.interop.fairseq_schema import EXTRA_STATE_KEY
from fairseq_lite.models.wav2vec.wav2vec2_asr import ADAPTERS_ONLY_FREEZE_REGEX

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "demo", "corpus")
PRETRAINED = os.path.join(REPO, "tests", "fixtures", "fairseq", "w2v2_large_pretrain", "checkpoint.pt")
MMS_CONFIG = os.path.join(REPO, "examples", "mms", "asr", "config")
MMS_INFER = os.path.join(REPO, "examples", "mms", "asr", "infer", "mms_infer.py")
LANGS = {"eng": "101", "fra": "102", "swh": "103"}  # language -> demo speaker
DEV_SPEAKER = "104"
UPDATES = 20


def utterances(speaker):
    """(flac path, frames, transcript) of a demo speaker, in file order."""
    folder = os.path.join(CORPUS, "train", speaker)
    rows = []
    for chapter in sorted(os.listdir(folder)):
        with open(os.path.join(folder, chapter, f"{speaker}-{chapter}.trans.txt")) as f:
            texts = dict(line.rstrip("\n").split(" ", 1) for line in f)
        for utt in sorted(texts):
            path = os.path.join(folder, chapter, f"{utt}.flac")
            rows.append((path, sf.info(path).frames, texts[utt]))
    return rows


def write_split(folder, name, rows, lower=False):
    """{name}.tsv and {name}.ltr (letters, ``|`` between words) of ``rows``."""
    os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
    with open(os.path.join(folder, f"{name}.tsv"), "w") as tsv, open(os.path.join(folder, f"{name}.ltr"), "w") as ltr:
        tsv.write("/\n")
        for path, frames, text in rows:
            tsv.write(f"{path}\t{frames}\n")
            text = text.lower() if lower else text
            ltr.write(" ".join(text.replace(" ", "|")) + " |\n")


def finetune(data, out):
    """fairseq-hydra-train vox_10h over the genuine fairseq pre-LN fixture, adapters added and nothing else trained."""
    save_dir = os.path.join(out, "checkpoints")
    splits = ",".join(f"{lang}:{lang}_train" for lang in LANGS)
    assert hydra_train.main([
        "--config-dir", os.path.join(REPO, "config", "finetuning"), "--config-name", "vox_10h", f"task.data={data}",
        f"model.w2v_path={PRETRAINED}", f"hydra.run.dir={out}", f"checkpoint.save_dir={save_dir}",
        "task.multi_corpus_keys='eng,fra,swh'", "task.multi_corpus_sampling_weights='0.34,0.33,0.33'",
        f"dataset.train_subset='{splits}'", "dataset.disable_validation=true", "dataset.validate_after_updates=0", "model.layer_type=trf_adp",
        "model.adp_num=3", "model.adp_dim=8", f"model.freeze_regex='{ADAPTERS_ONLY_FREEZE_REGEX}'",
        "model.freeze_finetune_updates=0", "model.apply_mask=false", "model.layerdrop=0", "common.cpu=true",
        "common.fp16=false", "common.log_interval=1", "common.tensorboard_logdir=null", "dataset.num_workers=0",
        "dataset.max_tokens=160000", "distributed_training.distributed_world_size=1", "optimization.update_freq=[1]",
        f"optimization.max_update={UPDATES}", "optimization.lr=[0.005]", "checkpoint.save_interval_updates=10",
        "checkpoint.keep_interval_updates=-1", "common.seed=1"]) == 0
    return save_dir


def build(work):
    data, plain, lettered = (os.path.join(work, name) for name in ("data", "decode", "decode_dict"))
    for lang, speaker in LANGS.items():
        write_split(data, f"{lang}_train", utterances(speaker)[:8])
    shutil.copy(os.path.join(CORPUS, "dict.ltr.txt"), data)
    dev = utterances(DEV_SPEAKER)[:2]
    write_split(plain, "dev", dev)
    write_split(lettered, "dev", dev, lower=True)  # fra's own script: lowercase letters, its dict/fra.txt
    os.makedirs(os.path.join(lettered, "dict"))
    with open(os.path.join(CORPUS, "dict.ltr.txt")) as src, open(os.path.join(lettered, "dict", "fra.txt"), "w") as dst:
        dst.write(src.read().lower())
    return SimpleNamespace(work=work, data=data, plain=plain, lettered=lettered, dev=[row[0] for row in dev],
                           save_dir=finetune(data, os.path.join(work, "finetune")))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("mms")))


def checkpoint(run, name="checkpoint_last.pt"):
    return os.path.join(run.save_dir, name)


def legacy(run, out, *flags, data=None):
    """infer.py (viterbi) on the decode folder; returns its results folder."""
    assert infer.main([data or run.plain, "--task", "audio_finetuning", "--labels", "ltr", "--path", checkpoint(run),
                       "--w2l-decoder", "viterbi", "--post-process", "letter", "--cpu", "--quiet",
                       "--results-path", out, *flags]) == 0
    return out


def hydra(run, out, *overrides, data=None):
    """new/infer.py with fairseq's examples/mms/asr/config/infer_common.yaml; returns decoding.results_path."""
    assert hydra_infer.main(["--config-dir", MMS_CONFIG, "--config-name", "infer_common", f"task.data={data or run.plain}",
                             f"common_eval.path={checkpoint(run)}", f"decoding.results_path={out}",
                             f"hydra.run.dir={out}/run", "common.cpu=true", "common_eval.quiet=true", *overrides]) == 0
    return out


def read(path):
    with open(path) as f:
        return f.read()


def test_adapter_finetune_changes_only_adapters_and_output_layer_and_the_ctc_loss_falls(run):
    with open(os.path.join(run.save_dir, "metrics.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["tag"] == "train_inner"]
    assert len(losses) == UPDATES and np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    pretrained = load_checkpoint_to_cpu(PRETRAINED)["model"]
    middle = load_checkpoint_to_cpu(checkpoint(run, "checkpoint_1_10.pt"))
    last = load_checkpoint_to_cpu(checkpoint(run))
    assert last["cfg"]["task"]["multi_corpus_keys"] == "eng,fra,swh"
    trained = {k for k in last["model"] if ".adapter_layer." in k or k.startswith("w2v_encoder.proj.")}
    assert len(trained) == 2 * 6 + 2
    for key, value in last["model"].items():
        if key in trained:  # every language's rows were trained between updates 10 and 20
            rows = value if value.dim() > 1 and ".adapter_layer." in key else value[None]
            before = middle["model"][key] if rows is value else middle["model"][key][None]
            assert all(not torch.equal(a, b) for a, b in zip(rows, before)), key
        else:
            source = pretrained[key.replace("w2v_encoder.w2v_model.", "")]
            assert torch.equal(value, source) and torch.equal(middle["model"][key], source), key


def test_lang_flag_and_lang_prefixed_subset_decode_alike_in_both_front_ends(run, tmp_path):
    by_flag = legacy(run, str(tmp_path / "flag"), "--gen-subset", "dev", "--lang", "eng")
    by_subset = legacy(run, str(tmp_path / "subset"), "--gen-subset", "eng:dev")
    names = sorted(os.listdir(by_flag))
    assert names == sorted(os.listdir(by_subset)) and "hypo.word-checkpoint_last.pt-eng:dev.txt" in names
    for name in names:
        assert read(os.path.join(by_flag, name)) == read(os.path.join(by_subset, name))
    new_flag = hydra(run, str(tmp_path / "new_flag"), "lang=eng")
    new_subset = hydra(run, str(tmp_path / "new_subset"), "dataset.gen_subset=eng:dev")
    for name in ("hypo.word", "hypo.units", "ref.word", "ref.units"):
        assert read(os.path.join(new_flag, name)) == read(os.path.join(new_subset, name))
        assert read(os.path.join(new_flag, name)) == read(os.path.join(by_flag, f"{name}-checkpoint_last.pt-eng:dev.txt"))
    refs = read(os.path.join(new_flag, "ref.word")).splitlines()
    assert len(refs) == 2 and all(line.split(" (None-")[0].isupper() for line in refs)


def test_each_language_runs_its_own_adapters(run, tmp_path):
    dumps = {}
    for lang in ("eng", "fra", "swh", "eng"):
        path = str(tmp_path / f"{lang}.npz")
        assert infer.main([run.plain, "--task", "audio_finetuning", "--labels", "ltr", "--path", checkpoint(run),
                           "--gen-subset", "dev", "--lang", lang, "--dump-emissions", path, "--cpu"]) == 0
        with np.load(path) as data:
            dumps.setdefault(lang, []).append(data["emissions"])
    assert np.array_equal(*dumps["eng"])
    for a, b in (("eng", "fra"), ("eng", "swh"), ("fra", "swh")):
        assert dumps[a][0].shape == dumps[b][0].shape and np.abs(dumps[a][0] - dumps[b][0]).max() > 1e-3


def test_a_dict_lang_txt_beside_the_data_is_that_languages_dictionary(run, tmp_path):
    plain = legacy(run, str(tmp_path / "plain"), "--gen-subset", "fra:dev")
    lettered = legacy(run, str(tmp_path / "dict"), "--gen-subset", "fra:dev", data=run.lettered)
    name = "{}-checkpoint_last.pt-fra:dev.txt"
    assert read(os.path.join(lettered, name.format("hypo.units"))) == read(
        os.path.join(plain, name.format("hypo.units"))).lower().replace("(none-", "(None-")
    refs = read(os.path.join(lettered, name.format("ref.word")))
    assert refs == read(os.path.join(plain, name.format("ref.word"))).lower().replace("(none-", "(None-")
    assert "<unk>" not in refs and any(c.islower() for c in refs)
    other = tmp_path / "other"
    shutil.copytree(run.lettered, other)
    (other / "dict" / "fra.txt").write_text("a 1\nb 1\n")
    with pytest.raises(DataError, match=r"fra.txt has 6 symbols but the model's output layer has \d+"):
        legacy(run, str(tmp_path / "bad"), "--gen-subset", "fra:dev", data=str(other))


def test_unknown_language_is_one_line_listing_the_known_ones(run, tmp_path):
    for flags in (["--gen-subset", "xyz:dev"], ["--gen-subset", "dev", "--lang", "xyz"]):
        with pytest.raises(ConfigError, match=r"unknown language 'xyz' \(subset xyz:dev\): the model knows eng, fra, swh"):
            legacy(run, str(tmp_path / "x"), *flags)
    with pytest.raises(ConfigError, match="--lang eng but the subset fra:dev names fra"):
        legacy(run, str(tmp_path / "x"), "--gen-subset", "fra:dev", "--lang", "eng")


def mms_infer():
    spec = importlib.util.spec_from_file_location("mms_infer", MMS_INFER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mms_infer_transcribes_audio_files_as_new_infer_does(run, tmp_path, capsys):
    expected = hydra(run, str(tmp_path / "new"), "lang=swh")
    hypos = sorted((int(line.rsplit("(None-", 1)[1].rstrip(")")), line.rsplit(" (None-", 1)[0])
                   for line in read(os.path.join(expected, "hypo.word")).splitlines())
    assert mms_infer().main(["--model", checkpoint(run), "--lang", "swh", "--audio", *run.dev, "--cpu"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("===============\n")[1:]
    assert blocks == [f"Input: {path}\nOutput: {text}\n" for path, (_, text) in zip(run.dev, hypos)]


@pytest.mark.parametrize("case", ["language", "audio"])
def test_mms_infer_errors_are_one_line(run, tmp_path, capsys, case):
    audio, lang = (run.dev, "xyz") if case == "language" else ([str(tmp_path / "missing.wav")], "eng")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(mms_infer().main, ["--model", checkpoint(run), "--lang", lang, "--audio", *audio, "--cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    expected = ("unknown language 'xyz' (subset xyz:dev): the model knows eng, fra, swh" if case == "language"
                else f"audio file {audio[0]} does not exist (--audio)")
    assert exit_info.value.code in (1, 2) and err[-1] == f"error: {expected}"


def mms_layout_file(run, path):
    """Our 3-language checkpoint in the layout of fairseq's released MMS files (mms1b_all.pt): one adapter row in the
    model (task.multi_corpus_keys=eng) and each language's rows, output layer and dictionary in state["adapter"]."""
    state = load_checkpoint_to_cpu(checkpoint(run))
    per_language = {}
    for k, lang in enumerate(LANGS):
        weights = {key: value[k : k + 1].clone() for key, value in state["model"].items() if ".adapter_layer." in key}
        weights.update({key: value.clone() for key, value in state["model"].items()
                        if key.startswith("w2v_encoder.proj.")})
        per_language[lang] = {"model": weights, "task_state": state["task_state"]}
    state["model"].update(per_language["eng"]["model"])
    state["adapter"] = per_language
    state["extra_state"].pop(EXTRA_STATE_KEY, None)  # the cfg below, not our checkpoint's stash of it, is the file's
    state["cfg"]["task"]["multi_corpus_keys"] = "eng"
    for model_cfg in (state["cfg"]["model"], state["cfg"]["model"]["w2v_args"]["model"]):
        model_cfg["adp_num"] = 1
    torch.save(state, path)
    return str(path)


def test_a_fairseq_mms_file_decodes_each_language_from_its_adapter_entry(run, tmp_path):
    mms = mms_layout_file(run, tmp_path / "mms1b_all.pt")
    dumps = []
    for path in (checkpoint(run), mms):  # swh: row 2 of ours, the file's only row once loaded
        out = str(tmp_path / f"swh_{len(dumps)}.npz")
        assert infer.main([run.plain, "--task", "audio_finetuning", "--labels", "ltr", "--path", path,
                           "--gen-subset", "dev", "--lang", "swh", "--dump-emissions", out, "--cpu"]) == 0
        with np.load(out) as data:
            dumps.append(data["emissions"])
    np.testing.assert_allclose(dumps[1], dumps[0], rtol=1e-5, atol=1e-5)
    out = legacy(run, str(tmp_path / "swh"), "--gen-subset", "swh:dev", "--path", mms)
    assert "hypo.word-mms1b_all.pt-swh:dev.txt" in os.listdir(out)
    with pytest.raises(ConfigError, match=r"unknown language 'xyz' \(subset xyz:dev\): the model knows eng, fra, swh"):
        legacy(run, str(tmp_path / "x"), "--gen-subset", "xyz:dev", "--path", mms)
