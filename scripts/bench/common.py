"""Shared pieces of the benchmark scripts: model presets, ours/HF pairs with identical weights, alternating
timing with medians, matmul peak, FLOP counting, profiler breakdown, peak memory of a fresh process, and
the device the models run on (the CPU, or a CUDA GPU with ``use_device("cuda")``).

Every comparison builds fairseq_lite's model and the Hugging Face Transformers model from one config, copies
our weights into HF's through ``fairseq_lite.interop.huggingface``, turns dropout and layerdrop off (both
then do the same arithmetic) and times them alternately on the same input.
"""

from __future__ import annotations

import gc
import multiprocessing
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from fairseq_lite.interop.huggingface import ctc_to_hf_state_dict, hf_config_kwargs, wav2vec2_to_hf_state_dict
from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

RATE = 16000
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                  dropout_features=0.0, encoder_layerdrop=0.0)
#: model sizes: the published BASE (95M parameters), a small one, and fairseq's LARGE layout
PRESETS: Dict[str, dict] = {
    "base": dict(final_dim=256),
    "small": dict(encoder_layers=4, encoder_embed_dim=384, encoder_ffn_embed_dim=1536, encoder_attention_heads=6,
                  final_dim=128, conv_feature_layers="[(256, 10, 5)] + [(256, 3, 2)] * 4 + [(256, 2, 2)] * 2"),
    "large": dict(extractor_mode="layer_norm", layer_norm_first=True, final_dim=768, conv_bias=True,
                  encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16),
}
_DEVICE = torch.device("cpu")


def use_device(name: str) -> torch.device:
    """Run the suite's models on ``name`` ("cpu", or "cuda" for a GPU)."""
    global _DEVICE
    chosen = torch.device(name)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    _DEVICE = chosen
    return chosen


def device() -> torch.device:
    """Where the models and their inputs live (``use_device``)."""
    return _DEVICE


def synchronize() -> None:
    """Wait for queued GPU work (a no-op on the CPU), so that timings cover the kernels themselves."""
    if _DEVICE.type == "cuda":
        torch.cuda.synchronize()


#: fairseq's wav2vec2_base_librispeech optimizer and loss settings
ADAM = dict(lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
LOSS_WEIGHTS = [0.1, 10.0]


def pretraining_config(preset: str) -> Wav2Vec2Config:
    return Wav2Vec2Config(**PRESETS[preset], quantize_targets=True, **NO_DROPOUT)


def hf_config(cfg: Wav2Vec2Config, **extra):
    """HF's ``Wav2Vec2Config`` for our config with SDPA attention; HF draws no masks itself (``extra`` may set
    ``mask_time_prob`` so that HF keeps the mask embedding that a given mask needs)."""
    import transformers

    config = transformers.Wav2Vec2Config(**{**hf_config_kwargs(cfg), "mask_time_prob": 0.0, **extra})
    config._attn_implementation = "sdpa"
    return config


def pretraining_pair(preset: str):
    """(ours ``Wav2Vec2Model``, HF ``Wav2Vec2ForPreTraining``) with identical weights, in training mode."""
    import transformers

    torch.manual_seed(0)
    cfg = pretraining_config(preset)
    ours = Wav2Vec2Model(cfg)
    config = hf_config(cfg, diversity_loss_weight=LOSS_WEIGHTS[0], mask_time_prob=cfg.mask_prob)
    theirs = transformers.Wav2Vec2ForPreTraining(config)
    theirs.load_state_dict(wav2vec2_to_hf_state_dict(ours.state_dict()), strict=True)
    return ours.train(), theirs.train()


def backbone_pair(preset: str):
    """(ours ``Wav2Vec2Model``, HF bare ``Wav2Vec2Model``) with identical backbone weights, in training mode."""
    import transformers

    torch.manual_seed(0)
    cfg = pretraining_config(preset)
    ours = Wav2Vec2Model(cfg)
    theirs = transformers.Wav2Vec2Model(hf_config(cfg))
    mapped = wav2vec2_to_hf_state_dict(ours.state_dict(), hf_prefix="")
    backbone = theirs.state_dict().keys()  # the bare HF model has no quantizer or projection heads
    theirs.load_state_dict({k: v for k, v in mapped.items() if k in backbone}, strict=True)
    return ours.train(), theirs.train()


def ctc_pair(preset: str, vocab_size: int = 32):
    """(ours ``Wav2VecCtc``, HF ``Wav2Vec2ForCTC``) with identical weights, in eval mode."""
    import transformers

    from fairseq_lite.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc, Wav2VecEncoder

    torch.manual_seed(0)
    model_args = {"_name": "wav2vec2", **PRESETS[preset], **NO_DROPOUT}
    cfg = Wav2Vec2CtcConfig(w2v_args={"model": model_args, "task": {"_name": "audio_pretraining"}})
    ours = Wav2VecCtc(cfg, Wav2VecEncoder.from_config(cfg, vocab_size))
    config = hf_config(Wav2Vec2Config(**PRESETS[preset], **NO_DROPOUT), vocab_size=vocab_size)
    theirs = transformers.Wav2Vec2ForCTC(config)
    theirs.load_state_dict(ctc_to_hf_state_dict(ours.state_dict()), strict=False)
    missing = set(theirs.state_dict()) - set(ctc_to_hf_state_dict(ours.state_dict()))
    if missing - {"wav2vec2.masked_spec_embed"}:
        raise RuntimeError(f"HF CTC weights left unset: {sorted(missing)}")
    return ours.eval(), theirs.eval()


# -- timing ---------------------------------------------------------------------------------------------


def alternate(runs: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, Dict[str, float]]:
    """Run each callable ``warmup`` times, then ``repeats`` rounds in turn; per name the median wall and
    process-CPU seconds (on a shared machine CPU time is the steadier of the two)."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    synchronize()
    wall: Dict[str, List[float]] = {name: [] for name in runs}
    cpu: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])} for name in runs}


def timing_arguments(parser) -> None:
    """The batch, clip length, repeats and threads flags every backbone benchmark takes."""
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)


def backbone_steps(ours: torch.nn.Module, theirs: torch.nn.Module, batch: int, seconds: float
                   ) -> Dict[str, Callable[[], None]]:
    """Step callables {"fairseq_lite": …, "transformers": …}: forward+backward of our backbone (``features_only``,
    no masking) and of an HF bare model on the same random batch, on the device the models are on."""
    source = torch.randn(batch, int(seconds * RATE), device=next(ours.parameters()).device)

    def ours_step():
        ours(source=source, mask=False, features_only=True)["x"].float().pow(2).mean().backward()
        ours.zero_grad(set_to_none=True)

    def hf_step():
        theirs(source).last_hidden_state.float().pow(2).mean().backward()
        theirs.zero_grad(set_to_none=True)

    return {"fairseq_lite": ours_step, "transformers": hf_step}


def compare_backbones(label: str, ours: torch.nn.Module, theirs: torch.nn.Module, batch: int, seconds: float,
                      repeats: int, threads: int) -> Dict[str, Dict[str, float]]:
    """Time ``backbone_steps`` alternately, print the medians and their ratio (> 1: we are faster); returns
    ``alternate``'s medians."""
    times = alternate(backbone_steps(ours, theirs, batch, seconds), repeats)
    medians = {name: t["wall"] for name, t in times.items()}
    print(f"{label}, batch {batch} x {seconds:g} s, fp32, {threads} threads, median of {repeats} forward+backward")
    for name, median in medians.items():
        print(f"  {name:13s} {median:.3f} s")
    print(f"  speed-up vs transformers: {medians['transformers'] / medians['fairseq_lite']:.2f}x")
    return times


def gemm_rate(m: int, k: int, n: int, repeats: int = 10) -> float:
    """Median fp32 GFLOP/s of an (m×k)·(k×n) matmul on the suite's device."""
    a, b = torch.randn(m, k, device=_DEVICE), torch.randn(k, n, device=_DEVICE)
    for _ in range(3):
        a @ b
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize()
        times.append(time.perf_counter() - start)
    return 2.0 * m * k * n / statistics.median(times) / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmuls, convolutions and attention that ``fn`` runs (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


#: profiler op-name groups for "what bounds it"
OP_GROUPS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::baddbmm", "aten::linear")),
    ("convolution", ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::_convolution",
                     "aten::convolution", "aten::conv1d")),
    ("attention", ("aten::_scaled_dot_product_flash_attention_for_cpu",
                   "aten::_scaled_dot_product_flash_attention_for_cpu_backward")),
    ("optimizer", ("aten::_fused_adamw_", "aten::_fused_adam_", "aten::_foreach_")),
)


def profile_breakdown(fn: Callable[[], object]) -> Dict[str, float]:
    """Share of self CPU time per op group (matmul, convolution, attention, optimizer, other) over one call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals = {name: 0.0 for name, _ in OP_GROUPS}
    totals["other"] = 0.0
    for event in prof.key_averages():
        group = next((name for name, prefixes in OP_GROUPS if event.key.startswith(prefixes)), "other")
        totals[group] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {name: value / whole for name, value in totals.items()}


# -- memory ---------------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_child(build: Callable, args: tuple, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    step = build(*args)
    with open("/proc/self/clear_refs", "w") as f:  # restart the high-water mark after building
        f.write("5")
    for _ in range(2):
        step()
    queue.put(_status_bytes("VmHWM"))


def _cuda_peak_memory(build: Callable, args: tuple) -> int:
    """Peak GPU memory allocated (bytes) over two steps of ``build(*args)``, weights included."""
    step = build(*args)
    synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    synchronize()
    peak = torch.cuda.max_memory_allocated()
    del step
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def peak_memory(build: Callable, args: tuple = (), threads: int = 2) -> int:
    """Peak resident memory (bytes) of a fresh process over two steps of ``build(*args)`` (a module-level
    function that returns a step callable): weights, optimizer state, activations and workspace, while the
    high-water mark of building the models is left out. Linux only (/proc). On a GPU: the peak of GPU memory
    allocated by the two steps, measured in this process."""
    if _DEVICE.type == "cuda":
        return _cuda_peak_memory(build, args)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(build, args, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def print_report(text: str, report: dict, json_path: Optional[str] = None) -> None:
    """Print a benchmark's tables and its JSON report; also write the JSON to ``json_path`` (atomically)."""
    import json

    from fairseq_lite.file_io import atomic_write_bytes

    print(text)
    print(json.dumps(report, indent=1))
    if json_path:
        atomic_write_bytes(json.dumps(report, indent=1).encode("utf-8"), json_path)


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
