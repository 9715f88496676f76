#!/usr/bin/env python
"""The GPU check: what must run on the first machine with a CUDA GPU, in under 8 minutes, into one JSON file.

    make gpu-wheels                                  # here: the wheels our dependencies need there, in .whl/
    bash scripts/bench/gpu_check.sh $OUT             # there: installs .whl/ and runs this into $OUT/gpu_check.json
    python scripts/bench/gpu_check.py --out gpu_check.json [--steps tests models]

Steps, each in its own process under its own time limit (a failing step is recorded, the next one runs):

- ``env``: torch, CUDA, the devices;
- ``tests``: the CUDA tests (tests/test_cuda.py) and infer.py's tests but the KenLM ones (``--fp16`` on the GPU),
  pytest's summary;
- ``models``: BASE ``wav2vec_ctc`` inference and the bare BASE backbone's forward+backward, ours against HF
  (identical weights, scripts/bench/common.py) at fp32, bf16 and fp16 autocast; our inference again with the SDPA
  kernel forced to flash, memory-efficient and math; medians, audio seconds per second, peak GPU memory;
- ``pretrain``: 50 updates of fairseq's BASE recipe (config/pretraining/wav2vec2_base_librispeech.yaml,
  ``common.bf16``) on the demo corpus through our Trainer: audio seconds per second after 5 warm-up updates,
  peak memory, first and last loss;
- ``ddp``: with two GPUs, the same recipe for 10 updates under ``torchrun --nproc_per_node 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

RATE = 16000
#: step → seconds it may take; the sum stays under 8 minutes
LIMITS = {"env": 30, "tests": 150, "models": 120, "pretrain": 120, "ddp": 60}
BASE_RECIPE = ("config/pretraining", "wav2vec2_base_librispeech")


def env_step() -> Dict[str, Any]:
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "devices": devices, "capability": list(torch.cuda.get_device_capability()) if devices else None}


def tests_step() -> Dict[str, Any]:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
            "tests/test_infer_cli.py", "-k", "not kenlm and not fairseqlm and not unit_lm"]  # no KenLM wheel there
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return {"returncode": done.returncode, "summary": lines[-1] if lines else "", "tail": lines[-30:]}


def timed(fn: Callable[[], object], repeats: int) -> Dict[str, Any]:
    """Median wall seconds of ``fn`` after two warm-up calls and the peak GPU memory, or the error it raised
    (a forced SDPA kernel that cannot take the inputs)."""
    from common import alternate, device

    cuda = device().type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        median = alternate({"run": fn}, repeats, warmup=2)["run"]["wall"]
    except RuntimeError as err:
        return {"error": str(err).splitlines()[0]}
    return {"seconds": median, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def models_step(batch: int = 4, seconds: float = 15.0, repeats: int = 10, where: str = "cuda") -> Dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from common import backbone_pair, backbone_steps, ctc_pair, use_device

    dev = use_device(where)
    source = torch.randn(batch, int(seconds * RATE), device=dev)
    rows: List[Dict[str, Any]] = []
    precisions = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def under(dtype, fn):
        def run():
            with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                fn()
        return run

    ours, theirs = (m.to(dev) for m in ctc_pair("base"))
    with torch.inference_mode():
        for name, dtype in precisions.items():
            for side, fn in (("fairseq_lite", lambda: ours(source=source)), ("transformers", lambda: theirs(source))):
                rows.append({"what": "BASE CTC inference", "side": side, "precision": name,
                             **timed(under(dtype, fn), repeats)})
        for kernel in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
            with sdpa_kernel([kernel]):
                rows.append({"what": "BASE CTC inference", "side": "fairseq_lite", "precision": "bf16",
                             "sdpa": kernel.name, **timed(under(torch.bfloat16, lambda: ours(source=source)), repeats)})
    del ours, theirs
    ours, theirs = (m.to(dev) for m in backbone_pair("base"))
    steps = backbone_steps(ours, theirs, batch, seconds)
    for name, dtype in precisions.items():
        for side, fn in steps.items():
            rows.append({"what": "BASE backbone forward+backward", "side": side, "precision": name,
                         **timed(under(dtype, fn), max(3, repeats // 2))})
    for row in rows:
        if "seconds" in row:
            row["audio_s_per_s"] = batch * seconds / row["seconds"]
    return {"batch": batch, "seconds_per_utterance": seconds, "rows": rows}


def demo_manifest(folder: str) -> str:
    """train.tsv (and valid.tsv) of the bundled demo corpus in ``folder``, by the manifest tool."""
    subprocess.run([sys.executable, "examples/wav2vec/wav2vec_manifest.py", "demo/corpus/train", "--dest", folder,
                    "--ext", "flac", "--valid-percent", "0"], cwd=REPO, check=True, capture_output=True)
    return folder


def base_recipe_overrides(data: str, updates: int) -> List[str]:
    """fairseq's BASE recipe on one GPU with bf16 instead of its fp16, no validation and no checkpoints."""
    return [f"task.data={data}", f"optimization.max_update={updates}", "common.fp16=false", "common.bf16=true",
            "common.log_interval=10", "dataset.max_tokens=1400000", "dataset.disable_validation=true",
            "checkpoint.no_save=true", "distributed_training.distributed_world_size=1",
            "optimization.update_freq=[1]", "dataset.num_workers=4"]


def pretrain_step(updates: int = 50, warmup: int = 5) -> Dict[str, Any]:
    from fairseq_lite.dataclass.initialize import compose_config, finalize_config
    from fairseq_lite.tasks import setup_task
    from fairseq_lite.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as folder:
        config_dir = os.path.join(REPO, BASE_RECIPE[0])
        cfg = finalize_config(compose_config(config_dir, BASE_RECIPE[1],
                                             base_recipe_overrides(demo_manifest(folder), updates)))
        task = setup_task(cfg.task)
        trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
        losses, audio, epoch, start = [], 0.0, 1, 0.0
        torch.cuda.reset_peak_memory_stats()
        while len(losses) < updates:
            for sample in trainer.get_train_iterator(epoch=epoch).next_epoch_itr(shuffle=True):
                if len(losses) == warmup:
                    torch.cuda.synchronize()
                    start, audio = time.perf_counter(), 0.0
                stats = trainer.train_step([sample])
                losses.append(float(stats["loss"]) if stats else float("nan"))
                padding = sample["net_input"].get("padding_mask")
                source = sample["net_input"]["source"]
                audio += (source.numel() - (int(padding.sum()) if padding is not None else 0)) / RATE
                if len(losses) == updates:
                    break
            epoch += 1
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    return {"updates": updates, "timed_updates": updates - warmup, "audio_s_per_s": audio / wall,
            "seconds_per_update": wall / (updates - warmup), "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "loss_first": losses[0], "loss_last": losses[-1]}


def ddp_step(updates: int = 10) -> Dict[str, Any]:
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): the DDP check needs two"}
    with tempfile.TemporaryDirectory() as folder:
        overrides = base_recipe_overrides(demo_manifest(folder), updates)
        overrides[overrides.index("distributed_training.distributed_world_size=1")] = \
            "distributed_training.distributed_world_size=2"
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                "fairseq_lite.cli.hydra_train", "--config-dir", BASE_RECIPE[0], "--config-name", BASE_RECIPE[1],
                *overrides]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    return {"returncode": done.returncode, "wall_s": time.perf_counter() - start,
            "tail": (done.stdout + done.stderr).strip().splitlines()[-15:]}


STEPS = {"env": env_step, "tests": tests_step, "models": models_step, "pretrain": pretrain_step, "ddp": ddp_step}


def run_step(name: str) -> Dict[str, Any]:
    """One step in a child process under its time limit: its result, or how it failed."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        argv = [sys.executable, os.path.abspath(__file__), "--child", name, "--out", result.name]
        start = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=LIMITS[name])
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "limit_s": LIMITS[name]}
        wall = time.perf_counter() - start
        if done.returncode != 0:
            return {"status": "failed", "wall_s": wall, "stderr": done.stderr.strip().splitlines()[-20:]}
        return {"status": "ok", "wall_s": wall, **json.load(open(result.name))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file of results (written atomically)")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--child", choices=list(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        with open(args.out, "w") as f:
            json.dump(STEPS[args.child](), f)
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device here; run it on a machine with a GPU")
    results = {}
    for name in args.steps:
        results[name] = run_step(name)
        print(f"{name}: {results[name]['status']} ({results[name].get('wall_s', 0):.0f} s)", flush=True)
        partial = args.out + ".tmp"
        with open(partial, "w") as f:  # rewritten after every step: a later timeout keeps the earlier results
            json.dump(results, f, indent=1)
        os.replace(partial, args.out)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
