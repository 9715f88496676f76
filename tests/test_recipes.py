"""fairseq2-style recipes (issue 18): ``python -m ssl|asr[.eval]`` from recipes/wav2vec2 on the demo corpus.

The five commands run as written (subprocesses, cwd recipes/wav2vec2) with the shipped demo configs on a slice of
demo/corpus (48 train, 8 valid, 8 test utterances), the dataset found through a user asset card
($FAIRSEQ2_USER_ASSET_DIR). Each recipe config and its committed fairseq-hydra-train twin (configs/demo_fairseq.yaml)
must give the same FairseqConfig and the same first losses; the mapping must hold both ways; the standard ssl module
must be the one a recipe process imports; bad cards and unknown keys are one-line errors naming file and key.
"""

import glob
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import soundfile as sf
import yaml

from fairseq_lite.cli import hydra_train
from fairseq_lite.data.labels import libri_transcripts, write_label_files
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.recipes import asset_cards
from fairseq_lite.recipes.cli import cli_main
from fairseq_lite.recipes.config_map import (DEFAULTS, MAPPING, apply_mapping, fairseq_to_recipe, load_recipe_config,
                                             recipe_to_fairseq)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes", "wav2vec2")
CORPUS = os.path.join(REPO, "demo", "corpus")
SLICE = {"train": 48, "valid": 8, "test": 8}


def config_path(kind):
    recipe, _, ev = kind.partition(".")
    return os.path.join(RECIPES, recipe, *(["eval"] if ev else []), "configs", "demo.yaml")


def write_manifest(data, split, count):
    """{split}.tsv of the first ``count`` files of the corpus split and its {split}.wrd (no .ltr, as fairseq2's)."""
    root = os.path.join(CORPUS, split)
    files = sorted(glob.glob(os.path.join(root, "*", "*", "*.flac")))[:count]
    tsv = os.path.join(data, f"{split}.tsv")
    with open(tsv, "w") as f:
        f.write(root + "\n" + "".join(f"{os.path.relpath(p, root)}\t{sf.info(p).frames}\n" for p in files))
    write_label_files(libri_transcripts(tsv), data, split)
    os.remove(os.path.join(data, f"{split}.ltr"))


def records(save_dir, tag):
    with open(os.path.join(save_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["tag"] == tag]


def recipe(kind, out, env, *extra):
    """``python -m KIND --config-file KIND/configs/demo.yaml [extra] OUT`` from recipes/wav2vec2."""
    config = os.path.relpath(config_path(kind), RECIPES)
    proc = subprocess.run([sys.executable, "-m", kind, "--config-file", config, *extra, out], cwd=RECIPES, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The demo slice, a user card for it, and the four recipe runs (ssl, ssl.eval, asr, asr.eval)."""
    work = tmp_path_factory.mktemp("recipes")
    data, cards = str(work / "data"), str(work / "cards")
    os.makedirs(data)
    os.makedirs(cards)
    for split, count in SLICE.items():
        write_manifest(data, split, count)
    with open(os.path.join(cards, "demo.yaml"), "w") as f:  # 'data' (fairseq2's README) and 'manifest_dir' (its code)
        f.write(f"name: demo_ssl\ndataset_family: wav2vec2_ssl\ndataset_config:\n  data: {data}/train.tsv\n---\n"
                f"name: demo_asr\ndataset_family: wav2vec2_asr\ndataset_config:\n  manifest_dir: {data}\n")
    env = {**os.environ, "FAIRSEQ2_USER_ASSET_DIR": cards, "OMP_NUM_THREADS": "1"}
    ssl_out, asr_out = str(work / "ssl_out"), str(work / "asr_out")
    w2v = os.path.join(ssl_out, "checkpoints", "checkpoint_last.pt")
    procs = {"ssl": recipe("ssl", ssl_out, env), "ssl.eval": recipe("ssl.eval", ssl_out, env)}
    procs["asr"] = recipe("asr", asr_out, env, "--config", f"pretrained_model.name={w2v}")
    procs["asr.eval"] = recipe("asr.eval", asr_out, env)
    return SimpleNamespace(work=work, data=data, cards=cards, env=env, ssl=ssl_out, asr=asr_out, w2v=w2v, procs=procs)


@pytest.mark.parametrize("kind", ["ssl", "asr"])
def test_train_recipe_writes_checkpoints_logs_and_config(runs, kind):
    out = getattr(runs, kind)
    names = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert {"checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_1_3.pt"} <= set(names)
    assert [r["step"] for r in records(os.path.join(out, "checkpoints"), "train_inner")] == [1, 2, 3]
    assert os.path.getsize(os.path.join(out, "logs", "train.log")) > 0
    with open(os.path.join(out, "config.yaml")) as f:
        written = yaml.safe_load(f)
    extra = [f"pretrained_model.name={runs.w2v}"] if kind == "asr" else []
    assert written == load_recipe_config(kind, config_path(kind), extra)
    if kind == "asr":  # letters derived from the words, as libri_labels.py spells them
        with open(os.path.join(out, "data", "train.wrd")) as w, open(os.path.join(out, "data", "train.ltr")) as l:
            word, letters = w.readline().split(), l.readline().split()
        assert letters == list("|".join(word)) + ["|"]


@pytest.mark.parametrize("kind,column", [("ssl", "loss"), ("asr", "wer")])
def test_eval_recipe_writes_its_table(runs, kind, column):
    """The table holds every split; on valid it equals the training run's last validation (same checkpoint; SSL's
    random masks and negatives differ between the two runs, so its loss is only close)."""
    out = getattr(runs, kind)
    with open(os.path.join(out, f"{kind}_eval.tsv")) as f:
        text = f.read()
    header, *rows = [line.split("\t") for line in text.splitlines()]
    assert [row[0] for row in rows] == ["valid", "test"]
    assert text in runs.procs[f"{kind}.eval"].stdout
    valid = dict(zip(header, rows[0]))
    last = records(os.path.join(out, "checkpoints"), "valid")[-1]
    assert float(valid[column]) == pytest.approx(last[column], abs=1e-3 if kind == "asr" else 0.1 * last[column])


def fairseq_pair(kind, runs, tmp):
    """(the recipe's FairseqConfig, fairseq-hydra-train's of configs/demo_fairseq.yaml) for the same folders."""
    data = runs.data if kind == "ssl" else os.path.join(runs.asr, "data")
    save_dir, log = os.path.join(tmp, "checkpoints"), os.path.join(tmp, "train.log")
    mapped = recipe_to_fairseq(kind, load_recipe_config(kind, config_path(kind), []), data, save_dir, log, runs.w2v)
    overrides = [f"task.data={data}", f"checkpoint.save_dir={save_dir}", f"common.log_file={log}"]
    overrides += [f"model.w2v_path={runs.w2v}"] if kind == "asr" else []
    composed = compose_config(os.path.dirname(config_path(kind)), "demo_fairseq", overrides)
    return finalize_config(mapped), finalize_config(composed), overrides


@pytest.mark.parametrize("kind", ["ssl", "asr"])
def test_recipe_config_is_the_fairseq_yaml(runs, kind, tmp_path):
    ours, theirs, _ = fairseq_pair(kind, runs, str(tmp_path))
    assert ours == theirs


@pytest.mark.parametrize("kind", ["ssl", "asr"])
def test_same_first_losses_as_fairseq_hydra_train(runs, kind, tmp_path):
    _, _, overrides = fairseq_pair(kind, runs, str(tmp_path))
    assert hydra_train.main(["--config-dir", os.path.dirname(config_path(kind)), "--config-name", "demo_fairseq",
                             *overrides, "dataset.disable_validation=true"]) == 0
    theirs = [r["loss"] for r in records(str(tmp_path / "checkpoints"), "train_inner")]
    ours = [r["loss"] for r in records(os.path.join(getattr(runs, kind), "checkpoints"), "train_inner")]
    assert len(ours) == 3 and ours == pytest.approx(theirs, rel=1e-5)


def leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


@pytest.mark.parametrize("kind", ["ssl", "asr"])
def test_mapping_both_ways(kind):
    """recipe → FairseqConfig → recipe gives back every mapped key, for non-default values too."""
    overrides = ["trainer.mixed_precision.dtype=torch.bfloat16", "regime.keep_last_n_checkpoints=2",
                 "optimizer.config.betas=[0.8, 0.95]", "trainer.grad_accumulation.num_batches=3",
                 "dataset.valid_split=valid,test", "common.seed=7"]
    rec = load_recipe_config(kind, config_path(kind), overrides)
    cfg = finalize_config(recipe_to_fairseq(kind, rec, "/data", "/ckpt", None, "/w2v.pt"))
    assert cfg.common.bf16 and not cfg.common.fp16 and cfg.optimization.update_freq == [3]
    assert cfg.dataset.valid_subset == "valid,test" and cfg.optimization.max_update == rec["regime"]["num_steps"]
    back = dict(leaves(fairseq_to_recipe(kind, cfg)))
    mapped = {key for keys, *_ in MAPPING for key in keys if key in dict(leaves(DEFAULTS[kind]))}
    assert set(back) == mapped
    flat = dict(leaves(rec))
    assert {key: back[key] for key in mapped} == {key: flat[key] for key in mapped}


def test_fairseq2_spellings_load(tmp_path):
    """fairseq2's asr/configs/base_10h.yaml values as that file writes them (5e-05, 800_000, quoted dtype)."""
    config = tmp_path / "base_10h.yaml"
    config.write_text('model:\n  arch: "base_10h"\n  family: "wav2vec2_asr"\n  config_overrides:\n'
                      '    encoder_config:\n      first_pass_dropout_p: 0.1\noptimizer:\n  config:\n    lr: 5e-05\n'
                      'dataset:\n  name: "librilight_asr_10h"\n  max_audio_len: 800_000\n  num_prefetch: 4\n'
                      'trainer:\n  mixed_precision:\n    dtype: "torch.float16"\nregime:\n'
                      '  validate_after_n_steps: 10_000\n')
    rec = load_recipe_config("asr", str(config), ["optimizer.config.lr=3e-5"])
    assert rec["optimizer"]["config"]["lr"] == 3e-5 and rec["dataset"]["max_audio_len"] == 800000
    cfg = finalize_config(recipe_to_fairseq("asr", rec, "/data", "/ckpt", None, "/w2v.pt"))
    assert cfg.optimization.lr == [3e-5] and cfg.common.fp16 and cfg.dataset.validate_after_updates == 10000
    assert cfg.model.mask_prob == 0.65 and cfg.model.freeze_finetune_updates == 10000  # fairseq's base_10h.yaml
    assert cfg.model.dropout_input == 0.1  # fairseq2's encoder_config.first_pass_dropout_p


def test_eval_mapping_sets_precision_and_splits():
    rec = load_recipe_config("ssl.eval", config_path("ssl.eval"), ["evaluator.amp=true",
                                                                  "evaluator.amp_dtype=torch.bfloat16"])
    mapped = {}
    apply_mapping(rec, mapped)
    assert mapped["common"]["bf16"] and not mapped["common"]["fp16"]
    assert mapped["dataset"]["valid_subset"] == "valid,test" and mapped["criterion"]["loss_weights"] == [0.1, 10.0]


SHADOW_CHECK = """
import runpy, sys
kind = sys.argv[1]
sys.argv = [kind, "--config-file", kind.replace(".", "/") + "/configs/demo.yaml", "--dump-config"]
try:
    runpy.run_module(kind, run_name="__main__", alter_sys=True)  # as python -m KIND does
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
import ssl
context = ssl.create_default_context()
print(ssl.__file__, type(context).__name__)
"""


@pytest.mark.parametrize("kind", ["ssl", "asr.eval"])
def test_recipe_process_imports_the_standard_ssl_module(kind):
    """From recipes/wav2vec2 ``ssl`` is the recipe folder; after a recipe ran, ``import ssl`` is Python's."""
    proc = subprocess.run([sys.executable, "-c", SHADOW_CHECK, kind], cwd=RECIPES, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, name = proc.stdout.split()[-2:]
    assert name == "SSLContext" and not path.startswith(RECIPES)
    assert "model:" in proc.stdout and "dataset:" in proc.stdout


def test_package_command_runs_from_anywhere(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fairseq_lite.recipes.wav2vec2.asr", "--config-file",
                           config_path("asr"), "--dump-config", "--config", "dataset.valid_split=valid,test",
                           "regime.num_steps=9"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = load_recipe_config("asr", config_path("asr"), ["dataset.valid_split=valid,test", "regime.num_steps=9"])
    assert yaml.safe_load(proc.stdout) == expected


def one_line_error(capsys, kind, argv):
    with pytest.raises(SystemExit) as exit:
        cli_main(kind, argv=argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


@pytest.mark.parametrize("text,key", [
    ("dataset:\n  max_audio_lenn: 5\n", "dataset.max_audio_lenn"),
    ("regime:\n  num_steps: many\n", "regime.num_steps"),
    ("optimiser:\n  name: adamw\n", "optimiser"),
    ("model:\n  config_overrides:\n    encoder_layer: 2\n", "model.config_overrides.encoder_layer"),
])
def test_unknown_recipe_keys_and_bad_values(tmp_path, capsys, text, key):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    err = one_line_error(capsys, "ssl", ["--config-file", str(config), "--dump-config"])
    assert str(config) in err and f"'{key}'" in err
    err = one_line_error(capsys, "ssl", ["--config", "trainer.grad_acumulation.num_batches=2", "--dump-config"])
    assert "--config trainer.grad_acumulation.num_batches=2" in err
    assert "did you mean 'trainer.grad_accumulation'" in err


@pytest.mark.parametrize("card,key", [
    ("dataset_family: wav2vec2_ssl\n", "'name'"),
    ("name: x\ndataset_family: wav2vec3_ssl\n", "'dataset_family'"),
    ("name: x\ndataset_family: wav2vec2_ssl\ndataset_config:\n  data: /no/such/folder\n", "'dataset_config.data'"),
    ("name: x\ndataset_family: wav2vec2_ssl\ndataset_config:\n  manifest_dir: no_such\n",
     "'dataset_config.manifest_dir'"),
    ("name: x\ndataset_family: wav2vec2_asr\n", "'dataset_config.data'"),
    ("name: x\ndataset_family: generic_asr\ndatasett_config: {}\n", "'datasett_config'"),
])
def test_bad_cards_are_one_line_errors_naming_file_and_key(tmp_path, capsys, card, key):
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "mine.yaml").write_text("name: fine\ndataset_family: wav2vec2_ssl\n---\n" + card)
    err = one_line_error(capsys, "ssl", ["--config", "dataset.name=x", f"common.assets.extra_paths=[{folder}]",
                                         str(tmp_path / "out")])
    assert f"{folder}/mine.yaml (document 2)" in err and key in err


def test_unknown_card_lists_the_known_ones(tmp_path, capsys):
    err = one_line_error(capsys, "asr", ["--config", "dataset.name=librilight_asr_1h", str(tmp_path / "out")])
    assert "'librilight_asr_1h'" in err and "librilight_asr_10h" in err and "demo_asr" not in err


def test_card_base_relative_paths_and_search_order(tmp_path, monkeypatch):
    """``base`` supplies missing fields; relative paths are read from the card's folder; a later folder wins."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "other").mkdir()
    builtin, user = tmp_path / "builtin", tmp_path / "user"
    builtin.mkdir()
    user.mkdir()
    (builtin / "a.yaml").write_text("name: corpus\ndataset_family: wav2vec2_asr\ndataset_config:\n  data: ../other\n")
    (user / "b.yaml").write_text("name: base_corpus\ndataset_family: wav2vec2_asr\ndataset_config:\n"
                                 "  data: ../manifests/train.tsv\n---\nname: corpus\nbase: base_corpus\n")
    (tmp_path / "manifests" / "train.tsv").write_text("/\n")
    monkeypatch.setenv("FAIRSEQ2_USER_ASSET_DIR", str(user))
    store = asset_cards.AssetStore([str(builtin), asset_cards.user_asset_dir()])
    card = store.resolve("corpus")
    assert card["dataset_family"] == "wav2vec2_asr"
    assert asset_cards.manifest_dir(card) == str(tmp_path / "manifests")
    with pytest.raises(ConfigError, match="name different folders"):
        both = {"_where": "c.yaml", "dataset_config": {"data": (str(tmp_path / "manifests"), "c.yaml"),
                                                        "manifest_dir": (str(tmp_path / "other"), "c.yaml")}}
        asset_cards.manifest_dir(both)
