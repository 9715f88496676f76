#!/usr/bin/env python
"""The benchmark suite behind `make bench`: fairseq_lite against its peers, one markdown table in README.md.

    python scripts/bench/run_all.py                 # measure, print, write README.md's Performance table
    python scripts/bench/run_all.py --quick --no-readme

Measurements (fp32, ``--threads`` torch threads, runs alternating between the two sides after a warm-up,
medians of ``--repeats``):
1. pretraining update (forward, loss, backward, optimizer step) for BASE and a small config: ours
   (``Wav2Vec2Model`` + ``wav2vec`` criterion + fused ``adam``) against HF ``Wav2Vec2ForPreTraining`` +
   fused ``torch.optim.AdamW`` (HF Trainer's default) with identical weights, the same batch and the same mask;
   seconds of audio per second; also both under bf16 autocast;
2. CTC inference for BASE: ``wav2vec_ctc`` against HF ``Wav2Vec2ForCTC``; real-time factor, also in bf16;
3. FLOP utilisation: FLOPs of one BASE update (``torch.utils.flop_counter``) per second, over the fp32 GEMM
   peak measured here (a large square matmul; the model's own GEMM shapes are shown too);
4. data loading: FileAudioDataset + EpochBatchIterator throughput against what the BASE update consumes, and
   the manifest tool's scan of thousands of files against fairseq's sequential one;
5. decoding: our flashlight KenLM lexicon decoder against pyctcdecode (bench_decoding.py);
6. HuBERT: forward+backward of our BASE ``hubert`` backbone against HF ``HubertModel`` (bench_hubert.py), and the
   label tools' audio seconds per second against real time: MFCC, BASE layer features on the CPU, k-means labels
   (bench_labels.py);
7. peak memory (resident set of a fresh process) of each side of 1, 2 and the HuBERT backbone, and of the BASE
   update and BASE CTC inference against genuine fairseq 0.12.2 too, each side importing only its own library
   (bench_memory.py);
8. feature extraction of the demo test split, every layer to .npy: extract_features.py against HF's
   ``output_hidden_states`` on the demo HuBERT exported to HF (bench_features.py; skipped without it);
9. w2v-BERT 2.0: forward (eval, no_grad) and forward+backward of our ``w2v_bert`` encoder against HF
   ``Wav2Vec2BertModel`` on the same 160-d features, 2.0's layer shapes at reduced depth (bench_w2v_bert.py).
Where a goal (≥ 1.3× HF for 1 and 2, ≥ 60 % of the matmul peak for 3) is not met, the profiler's split of one
update's CPU time says what bounds it. ``--device cuda`` runs the models of 1–3, the HuBERT backbone of 6 and
the probes of 7 on a GPU (the bf16 rows under CUDA autocast, SDPA choosing the GPU's attention kernels; peak
memory is GPU memory allocated); the label tools stay on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fairseq_lite.data.manifest import write_manifest  # noqa: E402

import bench_data  # noqa: E402
import bench_decoding  # noqa: E402
import bench_features  # noqa: E402
import bench_hubert  # noqa: E402
import bench_labels  # noqa: E402
import bench_memory  # noqa: E402
import bench_w2v_bert  # noqa: E402
from common import (ADAM, LOSS_WEIGHTS, RATE, alternate, backbone_steps, count_flops, ctc_pair,  # noqa: E402
                    device, gemm_rate, markdown_table, peak_memory, pretraining_config, pretraining_pair,
                    profile_breakdown, use_device)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
GOAL_RATIO, GOAL_UTILISATION = 1.3, 0.6
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


# -- workloads (module level so that the memory probe's fresh process can build them) ---------------------


def pretraining_steps(preset: str, batch: int, seconds: float, compile_ours: bool = False):
    """Step callables {"fairseq_lite": …, "transformers": …} for one pretraining update each, same mask;
    ``compile_ours``: our model through ``Wav2Vec2Model.compile`` (torch.compile of its tensor parts)."""
    import transformers.models.wav2vec2.modeling_wav2vec2 as hf_w2v

    from fairseq_lite.criterions.wav2vec_criterion import Wav2vecCriterion
    from fairseq_lite.modules.masking import compute_mask_indices
    from fairseq_lite.optim.adam import Adam

    ours, theirs = (model.to(device()) for model in pretraining_pair(preset))
    if compile_ours:
        ours.compile()
    torch.manual_seed(1)
    source = torch.randn(batch, int(seconds * RATE))
    frames = int(ours.feature_extractor.output_lengths(torch.tensor(source.size(1))))
    source = source.to(device())
    mask = compute_mask_indices((batch, frames), None, ours.masker.mask_prob, ours.masker.mask_length, min_masks=2,
                                rng=np.random.default_rng(0))
    negatives = hf_w2v._sample_negative_indices((batch, frames), ours.n_negatives, mask_time_indices=mask)
    mask_tensor = torch.from_numpy(mask).to(device())
    sample = {"id": torch.arange(batch), "net_input": {"source": source, "mask_indices": mask_tensor}}
    criterion = Wav2vecCriterion(infonce=True, loss_weights=LOSS_WEIGHTS)
    ours_opt = Adam(ours.parameters(), **ADAM)
    hf_opt = torch.optim.AdamW(theirs.parameters(), fused=True, **ADAM)  # HF Trainer's default on torch >= 2.8
    hf_inputs = dict(mask_time_indices=mask_tensor, sampled_negative_indices=torch.from_numpy(negatives).to(device()))

    def step_ours():
        ours_opt.zero_grad(set_to_none=True)
        criterion(ours, sample)[0].backward()
        ours_opt.step()

    def step_hf():
        hf_opt.zero_grad(set_to_none=True)
        theirs(source, **hf_inputs).loss.backward()
        hf_opt.step()

    return {"fairseq_lite": step_ours, "transformers": step_hf}


def ctc_steps(preset: str, batch: int, seconds: float, compile_ours: bool = False):
    """Step callables for CTC inference (logits of one batch, no grad) on each side (``compile_ours``: ours
    through ``Wav2VecCtc.compile``)."""
    ours, theirs = (model.to(device()) for model in ctc_pair(preset))
    if compile_ours:
        ours.compile()
    torch.manual_seed(1)
    source = torch.randn(batch, int(seconds * RATE)).to(device())

    def run_ours():
        with torch.inference_mode():
            ours.get_logits(ours(source=source, padding_mask=None))

    def run_hf():
        with torch.inference_mode():
            theirs(source).logits

    return {"fairseq_lite": run_ours, "transformers": run_hf}


def hubert_steps(batch: int, seconds: float):
    """Step callables for forward+backward of the HuBERT BASE backbone on each side (bench_hubert.build_pair)."""
    ours, theirs = (model.to(device()) for model in bench_hubert.build_pair())
    return backbone_steps(ours, theirs, batch, seconds)


def one_side(factory, side: str, *args):
    """Build ``factory(*args)`` and keep only ``side``'s step (the other model is freed before measuring)."""
    steps = factory(*args)
    step = steps.pop(side)
    steps.clear()
    gc.collect()
    return step


# -- the suite ---------------------------------------------------------------------------------------------

HEADER = ["measurement", "fairseq_lite", "peer", "ratio (ours ÷ peer)", "goal", "peak memory ours / peer"]


def memory_cell(mem: dict) -> str:
    """"ours / peer" peak memory, or blank without the memory probes."""
    if mem["fairseq_lite"] is None:
        return ""
    return " / ".join(f"{mem[side] / 2**20:,.0f} MiB" for side in ("fairseq_lite", "transformers"))


def with_autocast(step, dtype=torch.bfloat16):
    """``step`` under bf16 autocast on the suite's device (what ``common.amp=true`` does)."""
    def run():
        with torch.autocast(device().type, dtype=dtype):
            step()
    return run


def measure_pair(factory, args, repeats: int, threads: int, memory: bool, variants: bool = False):
    """Alternating timings of the sides ``factory(*args)`` builds (with ``variants``: also both under bf16
    autocast, and ours compiled), and each side's peak memory from a fresh process."""
    runs = factory(*args)
    if variants:
        runs.update({f"{side} bf16": with_autocast(step) for side, step in list(runs.items())})
        runs["fairseq_lite compiled"] = factory(*args, compile_ours=True)["fairseq_lite"]
    times = alternate(runs, repeats)
    runs.clear()  # free the timed models before the probes (on a GPU they run in this process)
    gc.collect()
    sides = ("fairseq_lite", "transformers")
    mem = {side: peak_memory(one_side, (factory, side, *args), threads) if memory else None for side in sides}
    return times, mem


def bounds_line(breakdown: dict) -> str:
    """"matmul 61%, convolution 22%, …" in falling order."""
    return ", ".join(f"{name} {share:.0%}" for name, share in sorted(breakdown.items(), key=lambda kv: -kv[1]))


def ceiling(split: dict, ours: dict, peer: dict) -> float:
    """The speed ratio ours would reach if only its matmul and convolution time were left."""
    return peer["wall"] / (ours["wall"] * (split["matmul"] + split["convolution"]))


def compiled_row(what: str, times: dict, value: str, peer_value: str) -> list:
    """The row of our model under ``.compile()`` (fp32) against the fp32 peer."""
    compiled, hf = times["fairseq_lite compiled"], times["transformers"]
    unit = "audio s / s" if "update" in what else "real-time factor"
    return [f"{what}, ours with torch.compile ({unit})", value, f"{peer_value} (HF, eager)",
            ratio_cell(compiled, hf), f"({times['fairseq_lite']['wall'] / compiled['wall']:.2f}× our eager)", ""]


def ratio_cell(ours: dict, peer: dict) -> str:
    """Wall-time speed ratio in bold, the CPU-time ratio beside it."""
    return f"**{peer['wall'] / ours['wall']:.2f}×** (CPU time {peer['cpu'] / ours['cpu']:.2f}×)"


def matmul_peak(cfg, frames: int):
    """fp32 GEMM GFLOP/s: a large square one and the model's layer shapes at ``frames`` rows."""
    dim, ffn = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
    shapes = [(frames, dim, dim), (frames, dim, 3 * dim), (frames, dim, ffn), (frames, ffn, dim)]
    return gemm_rate(2048, 2048, 2048), {shape: gemm_rate(*shape) for shape in shapes}


def pretraining_rows(args, preset: str, headline: bool, rows: list, notes: list) -> float:
    """Rows for the pretraining update of ``preset`` (with the bf16 and compiled variants when ``headline``,
    the profiler's split when the goal is missed); returns our median seconds per update."""
    audio = args.batch * args.seconds
    times, mem = measure_pair(pretraining_steps, (preset, args.batch, args.seconds), args.repeats, args.threads,
                              args.memory, variants=headline)
    ours, hf = times["fairseq_lite"], times["transformers"]
    what = f"pretraining update, {preset.upper()}, {args.batch} × {args.seconds:g} s"
    rows.append([f"{what} (audio s / s)", f"{audio / ours['wall']:.2f}",
                 f"{audio / hf['wall']:.2f} (HF Wav2Vec2ForPreTraining + fused AdamW)", ratio_cell(ours, hf),
                 f"≥ {GOAL_RATIO}×", memory_cell(mem)])
    if headline:
        ours16, hf16 = times["fairseq_lite bf16"], times["transformers bf16"]
        rows.append([f"{what}, bf16 autocast (audio s / s)", f"{audio / ours16['wall']:.2f}",
                     f"{audio / hf16['wall']:.2f} (HF, bf16 autocast)", ratio_cell(ours16, hf16),
                     f"({ours['wall'] / ours16['wall']:.2f}× our fp32)", ""])
        compiled = f"{audio / times['fairseq_lite compiled']['wall']:.2f}"
        rows.append(compiled_row(what, times, compiled, f"{audio / hf['wall']:.2f}"))
    if hf["wall"] / ours["wall"] < GOAL_RATIO and device().type == "cpu":  # the profiler split is of CPU time
        steps = pretraining_steps(preset, args.batch, args.seconds)
        split = profile_breakdown(steps["fairseq_lite"])
        notes.append(f"*What bounds the pretraining ratio* ({preset.upper()}, profiler, share of self CPU time): "
                     f"ours {bounds_line(split)}; HF {bounds_line(profile_breakdown(steps['transformers']))}. "
                     f"Both run the same MKL GEMMs and oneDNN convolutions at close to the matmul peak; with no "
                     f"time at all outside them ours would be at most {ceiling(split, ours, hf):.2f}× HF.")
    return ours["wall"]


def utilisation_rows(args, preset: str, wall: float, rows: list, notes: list) -> None:
    """FLOPs of one update of ``preset`` per second of its median time ``wall``, over the matmul peak."""
    cfg = pretraining_config(preset)
    frames = args.batch * int(args.seconds * 50)  # 50 frames per second of audio
    square, at_model = matmul_peak(cfg, frames)
    peak = max(square, *at_model.values())
    step = pretraining_steps(preset, args.batch, args.seconds)["fairseq_lite"]
    flops = count_flops(step)
    utilisation = flops / wall / 1e9 / peak
    rows.append([f"FLOP utilisation, {preset.upper()} update ({flops / 1e9:.0f} GFLOP counted)",
                 f"{flops / wall / 1e9:.0f} GFLOP/s", f"{peak:.0f} GFLOP/s fp32 matmul peak (2048³: {square:.0f})",
                 f"**{utilisation:.0%}** of peak", f"≥ {GOAL_UTILISATION:.0%}", ""])
    shapes = ", ".join(f"{m}×{k}×{n}: {rate:.0f}" for (m, k, n), rate in at_model.items())
    notes.append(f"GEMM rates at the model's shapes (GFLOP/s): {shapes}.")
    if utilisation < GOAL_UTILISATION and device().type == "cpu":
        split = profile_breakdown(step)
        dense = split["matmul"] + split["convolution"]
        notes.append(f"*What bounds the utilisation* (profiler, share of self CPU time): {bounds_line(split)}. "
                     f"Only the matmuls and convolutions ({dense:.0%}) run near the peak; norms, GELU, softmax, "
                     "bias and residual adds, copies and the optimizer are memory-bound, and the GEMMs of "
                     f"{frames} frames run below the large-square rate (shapes above).")


def ctc_rows(args, preset: str, rows: list, notes: list) -> None:
    """Real-time factor of CTC inference on one ``--ctc-seconds`` utterance, ours against HF."""
    seconds = args.ctc_seconds
    times, mem = measure_pair(ctc_steps, (preset, 1, seconds), args.repeats, args.threads, args.memory, variants=True)
    ours, hf = times["fairseq_lite"], times["transformers"]
    what = f"CTC inference, {preset.upper()}, 1 × {seconds:g} s"
    rows.append([f"{what} (real-time factor)", f"{ours['wall'] / seconds:.3f}",
                 f"{hf['wall'] / seconds:.3f} (HF Wav2Vec2ForCTC)", ratio_cell(ours, hf), f"≥ {GOAL_RATIO}×",
                 memory_cell(mem)])
    ours16, hf16 = times["fairseq_lite bf16"], times["transformers bf16"]
    rows.append([f"{what}, bf16 autocast (real-time factor)", f"{ours16['wall'] / seconds:.3f}",
                 f"{hf16['wall'] / seconds:.3f} (HF, bf16 autocast)", ratio_cell(ours16, hf16),
                 f"({ours['wall'] / ours16['wall']:.2f}× our fp32)", ""])
    compiled = f"{times['fairseq_lite compiled']['wall'] / seconds:.3f}"
    rows.append(compiled_row(what, times, compiled, f"{hf['wall'] / seconds:.3f}"))
    if hf["wall"] / ours["wall"] < GOAL_RATIO and device().type == "cpu":
        steps = ctc_steps(preset, 1, seconds)
        split = profile_breakdown(steps["fairseq_lite"])
        notes.append(f"*What bounds the CTC ratio* (profiler, share of self CPU time): ours {bounds_line(split)}; "
                     f"HF {bounds_line(profile_breakdown(steps['transformers']))}. Inference is the same GEMMs, "
                     "convolutions and attention kernels on both sides with nothing to skip; with no time outside "
                     f"matmul and convolution ours would be at most {ceiling(split, ours, hf):.2f}× HF.")


def loader_rows(args, consumed: float, preset: str, rows: list) -> None:
    """FileAudioDataset + EpochBatchIterator throughput (0 and ``--threads`` workers) against ``consumed``."""
    with tempfile.TemporaryDirectory() as folder:
        bench_data.make_files(folder, args.loader_files, args.seconds)
        scan, _ = bench_data.bench_manifest(folder, workers=args.threads)
        manifest = os.path.join(folder, "train.tsv")
        write_manifest(manifest, scan.root, scan.train + scan.valid)
        max_tokens = int(args.batch * args.seconds * RATE * 1.5)
        for workers in (0, args.threads):
            loader = bench_data.bench_loader(manifest, workers, max_tokens, args.threads)
            rows.append([f"data loading, {workers} workers (audio s / s)", f"{loader['audio_s_per_s']:.0f}",
                         f"{consumed:.2f} (consumed by the {preset.upper()} update)",
                         f"{loader['audio_s_per_s'] / consumed:.0f}× headroom", "> 1×", ""])
    torch.set_num_threads(args.threads)


def manifest_rows(args, rows: list) -> None:
    """wav2vec_manifest.py's scan (frame counts read by ``--threads`` processes) of ``--manifest-files`` short
    files against fairseq's way, one ``soundfile.info`` after another."""
    with tempfile.TemporaryDirectory() as folder:
        bench_data.make_files(folder, args.manifest_files, 0.5)
        _, timing = bench_data.bench_manifest(folder, workers=args.threads)
    files = timing["files"]
    rows.append([f"manifest creation, {files} FLAC files (files / s)", f"{files / timing['scan_s']:.0f}",
                 f"{files / timing['sequential_soundfile_info_s']:.0f} (sequential soundfile.info, as fairseq's "
                 "wav2vec_manifest.py)", f"**{timing['speedup']:.2f}×**", "", ""])


def decoding_rows(args, rows: list, notes: list) -> None:
    result = bench_decoding.run(bench_decoding.parse_args(["--utterances", str(args.decode_utterances)]))
    ours, theirs = result["fairseq_lite"], result["pyctcdecode"]
    rows.append([f"KenLM lexicon beam decoding, beam {result['setup']['beam']} (utterances / s, 1 thread)",
                 f"{ours['utt_per_s']:.1f} (WER {ours['wer']:.1f})",
                 f"{theirs['utt_per_s']:.1f} (pyctcdecode, WER {theirs['wer']:.1f})",
                 f"**{result['speed_ratio_ours_over_pyctcdecode']:.1f}×**", "", ""])
    notes.append("*Decoding*: both read the same ARPA 4-gram with the same LM weight and word score and beam "
                 f"{result['setup']['beam']}; ours is flashlight's lexicon decoder (words only from the lexicon), "
                 "pyctcdecode runs with its default pruning (beam_prune_logp −10, token_min_logp −5) and the "
                 "vocabulary as unigrams, which still lets it spell non-words: part of its higher WER.")


def hubert_rows(args, rows: list) -> None:
    """Our HuBERT BASE backbone against HF's HubertModel, forward+backward (HF has no HuBERT pretraining head)."""
    audio = args.batch * args.seconds
    times, mem = measure_pair(hubert_steps, (args.batch, args.seconds), args.repeats, args.threads, args.memory)
    ours, hf = times["fairseq_lite"], times["transformers"]
    rows.append([f"HuBERT backbone forward+backward, BASE, {args.batch} × {args.seconds:g} s (audio s / s)",
                 f"{audio / ours['wall']:.2f}", f"{audio / hf['wall']:.2f} (HF HubertModel)", ratio_cell(ours, hf),
                 "", memory_cell(mem)])


def w2v_bert_rows(args, rows: list, notes: list) -> None:
    """Our w2v-BERT 2.0 encoder against HF's Wav2Vec2BertModel, forward and forward+backward (bench_w2v_bert.py)."""
    audio, layers = args.batch * args.seconds, bench_w2v_bert.LAYERS
    diff = bench_w2v_bert.max_abs_diff(layers, args.batch, args.seconds)
    steps = (("forward", bench_w2v_bert.forward_steps), ("forward+backward", bench_w2v_bert.train_steps))
    for what, factory in steps:
        times, mem = measure_pair(factory, (args.batch, args.seconds), args.repeats, args.threads, args.memory)
        ours, hf = times["fairseq_lite"], times["transformers"]
        rows.append([f"w2v-BERT 2.0 encoder {what}, 2.0 layer shapes at {layers} of 24 layers, {args.batch} × "
                     f"{args.seconds:g} s (audio s / s)", f"{audio / ours['wall']:.2f}",
                     f"{audio / hf['wall']:.2f} (HF Wav2Vec2BertModel)", ratio_cell(ours, hf), "", memory_cell(mem)])
    notes.append(f"*w2v-BERT 2.0*: 1024 wide, FFN 4096, 16 heads, Shaw positions clipped to [-64, +8], depthwise "
                 f"kernel 31, on the same random 160-d features at 50 Hz (HF's input_features); HF's random weights "
                 f"copied into ours, dropout off, outputs equal to {diff:.1e}; {layers} layers instead of 24 to fit "
                 "the CPU (each layer costs the same).")


def label_tool_rows(args, rows: list, notes: list) -> None:
    """Audio seconds per second of the HuBERT label tools (bench_labels.py) against real time."""
    result = bench_labels.run(bench_labels.parse_args([
        "--files", str(args.label_files), "--seconds", str(args.seconds), "--repeats", str(args.repeats),
        "--threads", str(args.threads)]))
    setup = result.pop("setup")
    what = {"dump_mfcc_feature": "dump_mfcc_feature.py, 39-dim MFCC, 1 thread",
            "dump_hubert_feature": f"dump_hubert_feature.py, BASE layer 6 on the CPU, {args.threads} threads"}
    what.update({f"dump_km_label {label}": f"dump_km_label.py, {label} frames, {clusters} clusters"
                 for label, clusters in setup["clusters"].items()})
    for name, timing in result.items():
        speed = timing["audio_s_per_s"]
        rows.append([f"HuBERT labels: {what[name]} (audio s / s)", f"{speed:.1f}", "1 (real time)",
                     f"**{speed:.1f}×** real time (per CPU second {timing['audio_s_per_cpu_s']:.1f}×)", "> 1×",
                     ""])
    notes.append(f"*HuBERT label tools*: each tool's main on one shard of {setup['files']} synthetic FLAC files "
                 f"({setup['audio_s']:.0f} s of audio), file reading, model loading and writing included; the "
                 "BASE model is untrained (the cost does not depend on the weights), the k-means models are "
                 "fitted on the same features by learn_kmeans.py.")


def feature_rows(args, rows: list, notes: list) -> None:
    """extract_features.py (all layers to .npy) against HF ``output_hidden_states`` (bench_features.py) on the
    demo HuBERT, when scripts/run_demo.py --model hubert has left it."""
    checkpoint = os.path.join(REPO, bench_features.DEMO_CHECKPOINT)
    if not os.path.isfile(checkpoint):
        notes.append(f"*Feature extraction*: not measured, {bench_features.DEMO_CHECKPOINT} is missing (run "
                     "scripts/run_demo.py --model hubert).")
        return
    report = bench_features.run(bench_features.parse_args([
        "--checkpoint", checkpoint, "--audio", os.path.join(REPO, bench_features.DEMO_AUDIO),
        "--repeats", str(args.repeats), "--threads", str(args.threads)]))
    hf = report[bench_features.HF_RUN]
    for name in bench_features.OURS:
        ours = report[name]
        rows.append([f"feature extraction, all layers to .npy, {report['files']} demo test files, {name} "
                     "(audio s / s)",
                     f"{ours['audio_s_per_s']:.1f} (max abs diff {ours['max_abs_diff']:.1e})",
                     f"{hf['audio_s_per_s']:.1f} (HF output_hidden_states, one file at a time)",
                     f"**{ours['ratio_over_hf']:.2f}×** (CPU time {ours['cpu_ratio_over_hf']:.2f}×)", "", ""])
    notes.append("*Feature extraction*: the demo's HuBERT (1.1 M parameters, group-norm CNN) exported with "
                 "convert_to_hf.py; batched features differ from HF's single-file ones because that norm sees the "
                 "padding (extract_features.py --help), --max-tokens 0 gives HF's features to float rounding.")


def memory_rows(args, rows: list, notes: list) -> None:
    """Peak RSS of the BASE update and BASE CTC inference, ours against genuine fairseq 0.12.2 and HF, each in
    a fresh process (bench_memory.py); skipped without the genuine fairseq venv."""
    mem_args = bench_memory.parse_args(["--batch", str(args.batch), "--seconds", str(args.seconds),
                                        "--ctc-seconds", str(args.ctc_seconds), "--threads", str(args.threads)])
    if not os.path.exists(mem_args.fairseq_python):
        notes.append(f"*Peak memory against genuine fairseq*: not measured, no {mem_args.fairseq_python}.")
        return
    rows.extend(bench_memory.rows(bench_memory.run(mem_args), mem_args))


def run(args) -> str:
    """Every measurement; the caption, the table and the notes as markdown."""
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    presets = ["small"] if args.quick else ["base", "small"]
    walls = {}
    for preset in presets:
        walls[preset] = pretraining_rows(args, preset, preset == presets[0], rows, notes)
        gc.collect()
    utilisation_rows(args, presets[0], walls[presets[0]], rows, notes)
    ctc_rows(args, presets[0], rows, notes)
    loader_rows(args, args.batch * args.seconds / walls[presets[0]], presets[0], rows)
    manifest_rows(args, rows)
    decoding_rows(args, rows, notes)
    hubert_rows(args, rows)
    w2v_bert_rows(args, rows, notes)
    label_tool_rows(args, rows, notes)
    feature_rows(args, rows, notes)
    if args.memory and device().type == "cpu":
        memory_rows(args, rows, notes)
    # the allocator moves the ratios: big temporaries that glibc serves by mmap cost page faults on every step
    allocator = ", ".join(f"{k}={os.environ[k]}" for k in ALLOCATOR_VARIABLES if k in os.environ)
    where = (f"{torch.cuda.get_device_name()} GPU (peak memory: GPU memory allocated), data loading and decoding "
             f"on the CPU with " if device().type == "cuda" else "")
    caption = (f"{where}{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} "
               f"torch threads, fp32 unless noted, {allocator or 'default glibc malloc'}; "
               f"torch {torch.__version__}, transformers {_version('transformers')}; "
               f"medians of {args.repeats} alternating runs after a warm-up; ratios > 1: fairseq_lite is faster "
               f"(or needs less). {args.caption}")
    return "\n".join([caption.strip(), "", markdown_table(HEADER, rows), "", *[f"- {n}" for n in notes]])


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def write_readme(text: str, path: str = README) -> None:
    """Replace what lies between the bench markers of ``path`` with ``text``."""
    with open(path) as f:
        content = f.read()
    if START not in content or END not in content:
        raise SystemExit(f"{path} has no {START} … {END} markers: add them where the table belongs")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    content = pattern.sub(lambda _: f"{START}\n{text}\n{END}", content, count=1)
    with open(path, "w") as f:
        f.write(content)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where the models run: cpu, or cuda (a GPU; bf16 rows "
                        "use CUDA autocast, SDPA picks the GPU's attention kernels)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2, help="utterances per pretraining batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per utterance")
    parser.add_argument("--ctc-seconds", type=float, default=15.0)
    parser.add_argument("--loader-files", type=int, default=200)
    parser.add_argument("--manifest-files", type=int, default=8000, help="files scanned by the manifest row")
    parser.add_argument("--decode-utterances", type=int, default=100)
    parser.add_argument("--label-files", type=int, default=12, help="files the HuBERT label tools read")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory probes")
    parser.add_argument("--quick", action="store_true", help="small config only (a smoke run of the suite)")
    parser.add_argument("--caption", default="", help="extra caption text, e.g. about machine load")
    parser.add_argument("--no-readme", dest="readme", action="store_false", help="print only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    use_device(args.device)
    text = run(args)
    print(text)
    if args.readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
