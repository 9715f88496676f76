"""examples/speech_recognition/new/infer.py (fairseq_lite.cli.hydra_infer): fairseq's Hydra decoding front end.

Decodes the genuine fairseq fine-tuned checkpoint of tests/fixtures/fairseq/w2v2_ctc_base_10m (two utterances,
subset ``test``) and compares with what genuine fairseq 0.12.2's new/infer.py wrote on the same files
(tests/fixtures/fairseq/new_infer_viterbi, scripts/fairseq_fixtures/new_infer_fixtures.py), and with the legacy
infer.py front end (viterbi, kenlm, fairseqlm): the same decoders, hypotheses and WER.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from fairseq_lite.cli import hydra_infer, infer
from fairseq_lite.decoding.arpa import estimate, write_arpa
from fairseq_lite.errors import ConfigError, FairseqLiteError
from fairseq_lite.tasks import TASK_REGISTRY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "fairseq")
GENUINE = os.path.join(FIXTURES, "new_infer_viterbi")
SOURCE = os.path.join(FIXTURES, "w2v2_ctc_base_10m")
CHECKPOINT = os.path.join(SOURCE, "checkpoint.pt")
HUBERT_DECODE = os.path.join(REPO, "examples", "hubert", "config", "decode")
SCRIPT = os.path.join(REPO, "examples", "speech_recognition", "new", "infer.py")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


META = json.loads(read(os.path.join(GENUINE, "meta.json")))
RESULT_FILES = ("hypo.word", "hypo.units", "ref.word", "ref.units")
VOCABULARY_SIZE = 4 + len(read(os.path.join(SOURCE, "dict.ltr.txt")).splitlines())  # fairseq's 4 specials
#: HuBERT's infer_viterbi.yaml (the genuine run switches its task to audio_finetuning with overrides)
HUBERT_VITERBI = ["--config-dir", HUBERT_DECODE, "--config-name", "infer_viterbi"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The genuine run's subset ``test`` (and the same files as ``valid``) over the fixture's audio."""
    folder = tmp_path_factory.mktemp("data")
    for split in ("test", "valid"):
        for suffix in ("tsv", "ltr", "wrd"):
            text = META["subset"][f"test.{suffix}"]
            (folder / f"{split}.{suffix}").write_text(SOURCE + "\n" + text if suffix == "tsv" else text)
    shutil.copy(os.path.join(SOURCE, "dict.ltr.txt"), folder / "dict.ltr.txt")
    return folder


def fill(overrides, **paths):
    """The genuine command's overrides with its <data>, <checkpoint>, <results>, <run> placeholders filled."""
    paths = {"checkpoint": CHECKPOINT, **{k: str(v) for k, v in paths.items()}}
    filled = []
    for override in overrides:
        for key, value in paths.items():
            override = override.replace(f"<{key}>", value)
        filled.append(override)
    return filled


def hubert_overrides(data, results, *extra):
    return [*HUBERT_VITERBI, *fill(META["hubert_viterbi"]["overrides"], data=data, results=results), *extra]


def lines(folder, name):
    return (folder / name).read_text().splitlines()


def legacy(data, results, *flags):
    """infer.py on the same subset and checkpoint; returns its logged WER."""
    argv = [str(data), "--task", "audio_finetuning", "--path", CHECKPOINT, "--gen-subset", "test", "--results-path",
            str(results), "--labels", "ltr", "--post-process", "letter", "--cpu", "--quiet", *flags]
    assert infer.main(argv) == 0
    name = f"{os.path.basename(CHECKPOINT)}-test"
    return {prefix: lines(results, f"{prefix}-{name}.txt") for prefix in RESULT_FILES}


def logged(caplog, prefix):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_the_script_with_fairseqs_default_config_writes_fairseqs_files(data, tmp_path):
    results, run = tmp_path / "results", tmp_path / "run"
    argv = fill(META["default"]["overrides"], data=data, results=results, run=run)
    out = subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for name in RESULT_FILES + ("wer",):
        genuine = read(os.path.join(GENUINE, "default", name))
        assert (results / name).read_text() == genuine.replace("<results>", str(results)), name
    assert META["default"]["logged"] in out.stdout
    assert "HYPO: " in out.stdout and "REF: HELLO WORLD" in out.stdout  # common_eval.quiet=false
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    assert META["default"]["logged"] in (run / "infer.log").read_text()


def test_hubert_viterbi_yaml_writes_fairseqs_unique_wer_file_in_its_run_folder(data, tmp_path, caplog):
    caplog.set_level("INFO")
    assert hydra_infer.main(hubert_overrides(data, tmp_path)) == 0
    name = META["hubert_viterbi"]["wer_file"]  # wer.<md5 of the decoding settings>, as fairseq names it
    written = tmp_path / "viterbi" / name
    assert written.read_text() == read(os.path.join(GENUINE, "hubert_viterbi", name))
    assert sorted(p.name for p in (tmp_path / "viterbi").iterdir()) == [".hydra", "infer.log", name]
    assert logged(caplog, "Word error rate") == [META["hubert_viterbi"]["logged"]]


def test_viterbi_gives_legacy_infers_hypotheses_and_wer(data, tmp_path, caplog):
    caplog.set_level("INFO")
    ours = tmp_path / "ours"
    assert hydra_infer.main(hubert_overrides(data, tmp_path, f"decoding.results_path={ours}")) == 0
    before = legacy(data, tmp_path / "legacy", "--w2l-decoder", "viterbi")
    assert {name: lines(ours, name) for name in RESULT_FILES} == before
    [wer_file] = ours.glob("wer.*")
    assert wer_file.read_text().splitlines()[0] == "WER: 420.0"
    assert logged(caplog, "WER: ") == ["WER: 420.0"]


@pytest.fixture(scope="module")
def lexicon_and_lm(tmp_path_factory):
    """A lexicon of the transcripts' words and a 2-gram word ARPA estimated from them."""
    folder = tmp_path_factory.mktemp("lm")
    texts = META["subset"]["test.wrd"].split("\n")[:2]
    words = sorted({w for t in texts for w in t.split()})
    (folder / "lexicon.lst").write_text("".join(f"{w}\t{' '.join(w)} |\n" for w in words))
    log_probs, backoffs = estimate([t.split() for t in texts], 2)
    with open(folder / "lm.arpa", "w") as f:
        write_arpa(log_probs, backoffs, f)
    return folder


def test_kenlm_yaml_gives_legacy_infers_hypotheses(data, tmp_path, lexicon_and_lm):
    ours = tmp_path / "ours"
    overrides = [*fill(META["hubert_viterbi"]["overrides"], data=data, results=tmp_path),
                 f"decoding.lexicon={lexicon_and_lm / 'lexicon.lst'}", f"decoding.lmpath={lexicon_and_lm / 'lm.arpa'}",
                 f"decoding.results_path={ours}", "decoding.beam=20"]
    assert hydra_infer.main(["--config-dir", HUBERT_DECODE, "--config-name", "infer_kenlm", *overrides]) == 0
    # infer_kenlm.yaml's settings as infer.py flags; beamsizetoken unset means the whole dictionary, as in fairseq
    before = legacy(data, tmp_path / "legacy", "--w2l-decoder", "kenlm", "--lexicon", str(lexicon_and_lm / "lexicon.lst"),
                    "--lm-model", str(lexicon_and_lm / "lm.arpa"), "--beam", "20", "--beam-threshold", "100",
                    "--lm-weight", "2", "--word-score", "-1", "--sil-weight", "0", "--beam-size-token", str(VOCABULARY_SIZE))
    hypos = {name: lines(ours, name) for name in RESULT_FILES}
    assert hypos == before
    vocabulary = set(META["subset"]["test.wrd"].split())
    assert all(set(line.rsplit(" (", 1)[0].split()) <= vocabulary for line in hypos["hypo.word"])
    # the run folder infer_kenlm.yaml names after the settings
    assert (tmp_path / "beam20_th100.0_lmw2.0_wrd-1.0_sil0.0" / "infer.log").is_file()


def test_fsqlm_yaml_gives_legacy_infers_hypotheses(data, tmp_path):
    lm = os.path.join(FIXTURES, "transformer_lm", "checkpoint.pt")  # genuine fairseq transformer_lm
    words = ["the", "a", "cat", "on", "dog", "sat", "mat", "ran", "and"]
    (tmp_path / "lexicon.lst").write_text("".join(f"{w}\t{' '.join(w.upper())} |\n" for w in words))
    ours = tmp_path / "ours"
    overrides = [*fill(META["hubert_viterbi"]["overrides"], data=data, results=tmp_path),
                 f"decoding.lexicon={tmp_path / 'lexicon.lst'}", f"decoding.lmpath={lm}",
                 f"decoding.results_path={ours}", "decoding.beam=4", "decoding.lmweight=1"]
    assert hydra_infer.main(["--config-dir", HUBERT_DECODE, "--config-name", "infer_fsqlm", *overrides]) == 0
    before = legacy(data, tmp_path / "legacy", "--w2l-decoder", "fairseqlm", "--lexicon", str(tmp_path / "lexicon.lst"),
                    "--lm-model", lm, "--beam", "4", "--beam-threshold", "25", "--lm-weight", "1", "--word-score", "-1",
                    "--sil-weight", "0", "--beam-size-token", str(VOCABULARY_SIZE))
    hypos = {name: lines(ours, name) for name in RESULT_FILES}
    assert hypos == before
    assert all(set(line.rsplit(" (", 1)[0].split()) <= set(words) for line in hypos["hypo.word"])


def test_a_config_without_a_task_takes_the_checkpoints(data, tmp_path):
    """fairseq's infer.yaml has ``task: null``; ``task.data=…`` alone decodes with the checkpoint's task."""
    results = tmp_path / "results"
    overrides = [o for o in fill(META["default"]["overrides"], data=data, results=results, run=tmp_path / "run")
                 if not o.startswith(("task=", "task.labels"))]
    conf = os.path.join(REPO, "examples", "speech_recognition", "new", "conf")
    assert hydra_infer.main(overrides, default_config_dir=conf) == 0
    assert lines(results, "hypo.word") == read(os.path.join(GENUINE, "default", "hypo.word")).splitlines()


@pytest.mark.skipif("hubert_pretraining" not in TASK_REGISTRY, reason="needs the hubert_pretraining task")
def test_hubert_viterbi_yaml_as_written_pads_instead_of_cropping(data, tmp_path):
    """Its hubert_pretraining task (fine_tuning) reads the same files; fairseq crops the batch to the shortest
    utterance there (PR #3998), fairseq_lite pads, so the WER file equals fairseq's audio_finetuning one."""
    argv = [*HUBERT_VITERBI, f"task.data={data}", "task.normalize=false", f"common_eval.path={CHECKPOINT}",
            "dataset.gen_subset=test", f"common_eval.results_path={tmp_path}", "common.cpu=true"]
    assert hydra_infer.main(argv) == 0
    name = META["hubert_viterbi"]["wer_file"]
    assert (tmp_path / "viterbi" / name).read_text() == read(os.path.join(GENUINE, "hubert_viterbi", name))


def test_multirun_decodes_each_subset_into_its_sweep_folder(data, tmp_path):
    overrides = [o for o in fill(META["default"]["overrides"], data=data, results="", run="")
                 if not o.startswith(("decoding.results_path", "hydra.run.dir", "dataset.gen_subset"))]
    conf = os.path.join(REPO, "examples", "speech_recognition", "new", "conf")
    argv = ["-m", *overrides, "dataset.gen_subset=test,valid", f"hydra.sweep.dir={tmp_path}", "common_eval.quiet=true"]
    assert hydra_infer.main(argv, default_config_dir=conf) == 0
    for subset in ("test", "valid"):  # infer.yaml's sweep subdir is ${dataset.gen_subset}
        assert (tmp_path / subset / "wer").read_text().startswith("WER: 420.0\nerr / num_ref_words = 21 / 5\n")


def test_hubert_readmes_older_keys_are_read_as_fairseq_012s(data, tmp_path):
    """``decoding.exp_dir=D`` puts the results in D/decode/<type>/<subset>; ``decoding.decoder.name`` is the type."""
    argv = [*HUBERT_VITERBI, *[o for o in fill(META["hubert_viterbi"]["overrides"], data=data, results="")
                               if not o.startswith("common_eval.results_path")],
            f"decoding.exp_dir={tmp_path}", "decoding.decoder.name=viterbi"]
    assert hydra_infer.main(argv) == 0
    name = META["hubert_viterbi"]["wer_file"]
    assert (tmp_path / "decode" / "viterbi" / "test" / "viterbi" / name).is_file()


def test_a_failed_rerun_keeps_the_earlier_results(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    audio = copy / "audio"
    shutil.copytree(os.path.join(SOURCE, "audio"), audio)
    tsv = (copy / "test.tsv").read_text().splitlines()
    (copy / "test.tsv").write_text("\n".join([str(copy)] + tsv[1:]) + "\n")
    results = tmp_path / "results"
    argv = hubert_overrides(copy, tmp_path, f"decoding.results_path={results}", "dataset.batch_size=1")
    assert hydra_infer.main(argv) == 0
    before = {p.name: p.read_text() for p in results.iterdir()}
    (audio / "u1.wav").write_bytes(b"RIFF not audio")
    with pytest.raises(FairseqLiteError, match="u1.wav"):
        hydra_infer.main(argv)
    assert {p.name: p.read_text() for p in results.iterdir()} == before  # no temporary files left either


@pytest.mark.parametrize("extra, message", [
    (["decoding.type=kenlmm"], "unknown decoding.type 'kenlmm': did you mean 'kenlm'?"),
    (["decoding.type=kenlm", "decoding.lmpath=lm.arpa"], "decoding.type=kenlm needs decoding.lexicon=<lexicon file>"),
    (["decoding.type=fairseqlm", "decoding.lexicon=lex"], "decoding.type=fairseqlm needs decoding.lmpath="),
    (["common_eval.path=null"], "new/infer.py needs common_eval.path=/path/to/checkpoint.pt"),
    (["dataset.gen_subset=???"], "missing mandatory value 'dataset.gen_subset'"),
    (["decoding.beem=5"], "unknown key 'decoding.beem'"),
    (["decoding.beam=0"], "decoding.beam must be a positive number"),
    (["distributed_training.distributed_world_size=2"], "decodes a subset in one process"),
    (["+run=submitit_slurm"], "needs the submitit launcher"),
    (["hydra/sweeper=ax"], "needs the ax sweeper"),
    (["--beam", "5"], "unknown flag --beam: new/infer.py takes overrides such as decoding.beam=5"),
])
def test_bad_settings_fail_with_one_clear_error_before_decoding(data, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?").replace("+", r"\+")):
        hydra_infer.main(hubert_overrides(data, tmp_path, *extra))
    assert not (tmp_path / "viterbi").exists()


def test_hubert_decode_yamls_load_as_written():
    """All three need their ??? keys from the command line; the ax_sweep/ and run/ sub-configs need plugins."""
    for name in ("infer_viterbi", "infer_kenlm", "infer_fsqlm"):
        with pytest.raises(ConfigError, match="missing mandatory value 'common_eval.path'"):
            hydra_infer.main(["--config-dir", HUBERT_DECODE, "--config-name", name])
    given = [f"task.data={REPO}", "task.normalize=false", "common_eval.path=x.pt", "common_eval.results_path=/r"]
    with pytest.raises(ConfigError, match="missing mandatory value 'dataset.gen_subset'"):  # not the default 'test'
        hydra_infer.main([*HUBERT_VITERBI, *given])
    with pytest.raises(ConfigError, match="needs the ax sweeper"):
        hydra_infer.main([*HUBERT_VITERBI, "+ax_sweep=ngram"])
    with pytest.raises(ConfigError, match="give --config-dir and --config-name"):
        hydra_infer.main(["common_eval.path=x"])


def test_a_typed_key_left_mandatory_in_a_yaml_stays_mandatory():
    """fairseq's OmegaConf 2.0 lets ``???`` replace a typed default; the loader keeps that meaning (demo.yaml)."""
    from omegaconf import OmegaConf

    from fairseq_lite.dataclass.initialize import compose_config

    folder = os.path.join(REPO, "config", "finetuning")
    assert OmegaConf.is_missing(compose_config(folder, "demo", []).checkpoint, "save_dir")
    assert compose_config(folder, "demo", ["checkpoint.save_dir=checkpoints"]).checkpoint.save_dir == "checkpoints"
