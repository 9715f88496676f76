"""Shared helpers of the genuine-fairseq fixture generators (run in the genuine fairseq 0.12.2 venv only).

They make tiny synthetic audio corpora, run fairseq's own commands (``fairseq-hydra-train``, ``fairseq-train``,
``fairseq-preprocess``) as subprocesses of this interpreter, record what fairseq's modules return while a
fixed input runs through them, and write a fixture folder: the checkpoint fairseq wrote, ``.npz`` arrays
(float32, no pickles) and ``meta.json``. Never imported by fairseq_lite or by its tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "fairseq")
RATE = 16_000


def fairseq_dir() -> str:
    """The installed fairseq package folder (its ``examples/`` ships the yaml recipes and scripts)."""
    import fairseq

    return os.path.dirname(fairseq.__file__)


def versions() -> Dict[str, str]:
    """fairseq, torch, numpy and Python versions, for ``meta.json``."""
    import fairseq
    import torch

    return {"fairseq": fairseq.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def tone(num_samples: int, freq: float, rng: np.random.RandomState) -> np.ndarray:
    """A sine of ``freq`` Hz plus a little noise, float32 in [-1, 1]."""
    t = np.arange(num_samples) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.randn(num_samples)).astype(np.float32)


def write_audio_corpus(folder: str, lengths: Sequence[int], seed: int = 0, splits: Sequence[str] = ("train", "valid")
                       ) -> List[str]:
    """``u{i}.wav`` (16-bit PCM, 16 kHz) of the given lengths and fairseq manifests ``{split}.tsv`` listing all of
    them (root line, then ``name<TAB>num_samples``); returns the file names."""
    import soundfile as sf

    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    names = []
    for i, n in enumerate(lengths):
        name = f"u{i}.wav"
        sf.write(os.path.join(folder, name), tone(n, 180 + 50 * i, rng), RATE, subtype="PCM_16")
        names.append(name)
    write_manifest(folder, names, lengths, splits)
    return names


def write_manifest(folder: str, names: Sequence[str], lengths: Sequence[int], splits: Sequence[str]) -> None:
    """fairseq's manifest layout for the files ``names`` in ``folder``."""
    text = folder + "\n" + "".join(f"{name}\t{n}\n" for name, n in zip(names, lengths))
    for split in splits:
        with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
            f.write(text)


def run_fairseq(argv: Sequence[str], log_path: str, cwd: str = REPO) -> None:
    """Run ``python <argv>`` with this (genuine-fairseq) interpreter, output into ``log_path``; stop with the
    log's tail when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        result = subprocess.run([sys.executable, *argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-4000:]
        raise SystemExit(f"{' '.join(argv[:3])} ... failed (rc {result.returncode}), log {log_path}:\n{tail}")


def hydra_train(config_dir: str, config_name: str, overrides: Sequence[str], work: str) -> str:
    """``fairseq-hydra-train --config-dir D --config-name N overrides...`` with its run dir and save dir in
    ``work``; returns the path of the ``checkpoint_last.pt`` it wrote. (fairseq's Hydra 1.0 parser wants the
    overrides after the flags.)"""
    save_dir = os.path.join(work, "checkpoints")
    run_fairseq(["-m", "fairseq_cli.hydra_train", "--config-dir", config_dir, "--config-name", config_name,
                 *overrides, f"hydra.run.dir={os.path.join(work, 'hydra')}", f"checkpoint.save_dir={save_dir}"],
                os.path.join(work, "train.log"))
    return os.path.join(save_dir, "checkpoint_last.pt")


def legacy_train(data: str, flags: Sequence[str], work: str) -> str:
    """``fairseq-train DATA --save-dir ... flags...`` (the argparse flag CLI); returns ``checkpoint_last.pt``."""
    save_dir = os.path.join(work, "checkpoints")
    run_fairseq(["-m", "fairseq_cli.train", data, "--save-dir", save_dir, *flags], os.path.join(work, "train.log"))
    return os.path.join(save_dir, "checkpoint_last.pt")


def to_numpy(value: Any) -> np.ndarray:
    """A tensor or array as NumPy: floating point as float32, everything else as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value


def save_npz(path: str, arrays: Dict[str, Any]) -> None:
    """``arrays`` as an uncompressed ``.npz`` of plain arrays (loadable with ``allow_pickle=False``)."""
    np.savez(path, **{key: to_numpy(value) for key, value in arrays.items()})


def write_fixture(folder: str, checkpoint: str, inputs: Dict[str, Any], outputs: Dict[str, Any],
                  meta: Dict[str, Any]) -> None:
    """``folder``: fairseq's checkpoint copied byte for byte as ``checkpoint.pt``, ``inputs.npz``,
    ``outputs.npz`` and ``meta.json`` (versions, plus ``meta``, plus the recorded array names)."""
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(checkpoint, os.path.join(folder, "checkpoint.pt"))
    save_npz(os.path.join(folder, "inputs.npz"), inputs)
    save_npz(os.path.join(folder, "outputs.npz"), outputs)
    write_meta(folder, {**meta, "inputs": sorted(inputs), "outputs": sorted(outputs)})


def write_meta(folder: str, meta: Dict[str, Any]) -> None:
    """``folder/meta.json``: the versions, then ``meta``; says the fixture folder is written."""
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({**versions(), **meta}, f, indent=1)
        f.write("\n")
    print(f"wrote {folder}", flush=True)


@contextlib.contextmanager
def recording(obj: Any, method: str) -> Iterator[List[Any]]:
    """Within the block, every return value of ``obj.method(...)`` is appended to the yielded list (the
    method itself runs unchanged), e.g. the mask and negatives fairseq draws inside a forward."""
    original = getattr(obj, method)
    had_own = method in vars(obj)
    calls: List[Any] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        calls.append(result)
        return result

    setattr(obj, method, wrapper)
    try:
        yield calls
    finally:
        if had_own:
            setattr(obj, method, original)
        else:
            delattr(obj, method)


@contextlib.contextmanager
def recording_all(pairs: Sequence[Any]) -> Iterator[List[List[Any]]]:
    """``recording`` of several ``(obj, method)`` pairs at once; yields their call lists in order."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(recording(obj, method)) for obj, method in pairs]


@contextlib.contextmanager
def module_outputs(modules: Sequence[Any]) -> Iterator[List[Any]]:
    """Within the block, the first output of each module's forward (the whole output if not a tuple) is
    appended to the yielded list, in call order."""
    outputs: List[Any] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def generator_main(description: str, generate: Callable[[str], None]) -> None:
    """A generator script's command line: ``--output-dir`` (default tests/fixtures/fairseq), then ``generate``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output-dir", default=FIXTURES)
    generate(parser.parse_args().output_dir)
