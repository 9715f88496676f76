"""Our checkpoints in fairseq's own terms: fairseq (stood in for here, it cannot be installed) unpickles them
without fairseq_lite, its Dictionary included, and its MetersDict can read the meters we store."""

import json
import subprocess
import sys
import textwrap

import pytest

import train_toy
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.file_io import atomic_save
from fairseq_lite.training.meters import MetersGroup
from fairseq_lite.training.train import main

#: What fairseq's side needs: its Dictionary class (the attributes fairseq's __init__ sets) and the reading
#: loop of fairseq.logging.meters.MetersDict.load_state_dict, with fairseq_lite made unimportable.
FAIRSEQ_READER = textwrap.dedent('''
    import json, sys
    sys.modules["fairseq_lite"] = None
    import torch
    state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
    d = state["task_state"]["target_dictionary"]
    meters = {}
    for name, entries in state["extra_state"]["metrics"].items():
        for priority, key, meter_class, meter_state in entries:
            assert meter_class in ("AverageMeter", "TimeMeter"), meter_class
            needed = {"val", "sum", "count", "round"} if meter_class == "AverageMeter" else {"init", "n", "round"}
            assert needed <= set(meter_state), (key, meter_state)
            meters[f"{name}/{key}"] = [priority, meter_class, meter_state.get("sum", meter_state.get("n"))]
    print(json.dumps({"class": type(d).__module__ + "." + type(d).__name__, "symbols": d.symbols,
                      "pad": d.pad_index, "meters": meters}))
''')

STAND_IN = 'class Dictionary:\n    """fairseq.data.dictionary.Dictionary, as far as unpickling goes."""\n'


@pytest.fixture
def fairseq_on_path(tmp_path):
    root = tmp_path / "site"
    package = root / "fairseq" / "data"
    package.mkdir(parents=True)
    (root / "fairseq" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "dictionary.py").write_text(STAND_IN)
    return root


def test_fairseq_reads_our_checkpoint_dictionary_and_meters(tmp_path, fairseq_on_path):
    save_dir = tmp_path / "run"
    main(train_toy.toy_config(save_dir, optimization={"max_update": 6}))
    state = load_checkpoint_to_cpu(str(save_dir / "checkpoint_last.pt"))
    dictionary = Dictionary()
    for letter in "|ETAO":
        dictionary.add_symbol(letter)
    state["task_state"]["target_dictionary"] = dictionary
    path = tmp_path / "finetuned.pt"
    atomic_save(state, str(path))

    out = subprocess.run([sys.executable, "-c", FAIRSEQ_READER, str(path)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(fairseq_on_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["class"] == "fairseq.data.dictionary.Dictionary"
    assert seen["symbols"] == dictionary.symbols and seen["pad"] == dictionary.pad_index
    assert seen["meters"]["train/ups"][:2] == [100, "TimeMeter"]
    assert seen["meters"]["train/ups"][2] == 6  # six updates in this epoch's meters
    assert seen["meters"]["train/loss"][1] == "AverageMeter"

    # and fairseq_lite reads the fairseq-named class back as its own, safely and when trusted
    for trusted in (False, True):
        again = load_checkpoint_to_cpu(str(path), trust_checkpoint=trusted)
        assert type(again["task_state"]["target_dictionary"]) is Dictionary
        assert again["task_state"]["target_dictionary"] == dictionary


def test_meters_round_trip_through_fairseq_layout():
    group = MetersGroup()
    group.add({"loss": 2.0, "accuracy": 0.5}, weights={"loss": 10.0}, ntokens=100)
    group.add({"loss": 4.0, "accuracy": 0.7}, weights={"loss": 30.0}, ntokens=300)
    restored = MetersGroup()
    restored.load_state_dict(group.state_dict())
    assert restored.averages()["loss"] == pytest.approx(3.5)
    assert restored.averages()["accuracy"] == pytest.approx(0.6)
    assert restored.updates == 2 and restored.tokens == 400
    # a genuine fairseq meter list: kinds fairseq_lite does not keep are left out
    restored.load_state_dict([(10, "loss", "AverageMeter", {"val": 1.0, "sum": 6.0, "count": 3, "round": 3}),
                              (800, "train_wall", "SumMeter", {"sum": 5.0, "round": 0}),
                              (100, "ups", "TimeMeter", {"init": 12.0, "n": 3, "round": 2})])
    assert restored.averages()["loss"] == pytest.approx(2.0) and restored.updates == 3
    assert "train_wall" not in restored.averages()
