#!/usr/bin/env python3
"""Pictures of a wav2vec 2.0 run: training curves, features, embeddings, similarities (PNG, matplotlib Agg).

    python scripts/plot.py --out demo_out/plots \\
        --metrics pretraining=demo_out/pretrain/metrics.jsonl fine-tuning=demo_out/finetune/metrics.jsonl \\
        --pretrained demo_out/pretrain/checkpoint_last.pt --finetuned demo_out/finetune/checkpoint_best.pt \\
        --data demo_out/data --subset test

Writes, for what it is given:
  training_curves.png      from each metrics.jsonl (fairseq-hydra-train writes it in checkpoint.save_dir):
                           loss, contrastive accuracy, code/prob perplexity, lr, validation WER/UER
  spectrogram.png          log spectrogram of the first utterance above the CNN features of each model
  embeddings_pca.png       frame embeddings (transformer output) of the subset, PCA to 2-D, coloured by the
  embeddings_tsne.png      letter the fine-tuned model's greedy CTC path emits at that frame (blank frames left
                           out), one panel per model; t-SNE is a small exact implementation (no scikit-learn)
  cosine_similarity.png    cosine similarity of mean-pooled utterance embeddings, utterances sorted by speaker
  nearest_neighbours.png   for a few utterances, the most similar others (also nearest_neighbours.txt)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

#: (panel title, metric keys) of training_curves.png; train_inner records, except the validation panel.
CURVE_PANELS = [
    ("loss (train, bits)", ["loss"]),
    ("contrastive accuracy", ["accuracy"]),
    ("codebook perplexity", ["prob_perplexity", "code_perplexity"]),
    ("learning rate", ["lr"]),
    ("validation error rate %", ["wer", "uer"]),
]
TRAIN_TAGS = ("train_inner", "train")


# -- training curves ----------------------------------------------------------------------------------

def read_metrics(path: str) -> List[dict]:
    """The records of a metrics.jsonl file (a half-written last line is ignored)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_curves(runs: Dict[str, List[dict]], out: str) -> Optional[str]:
    """training_curves.png: one panel per CURVE_PANELS entry that some run has, every run overlaid."""
    panels = []
    for title, keys in CURVE_PANELS:
        validation = title.startswith("validation")
        series = []
        for name, records in runs.items():
            chosen = [r for r in records if (r["tag"] not in TRAIN_TAGS) == validation
                      and (validation or r["tag"] == "train_inner")]
            for key in keys:
                points = [(r["step"], r[key]) for r in chosen if key in r]
                if points:
                    label = name if len(keys) == 1 else f"{name}: {key}"
                    series.append((label, points))
        if series:
            panels.append((title, series))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for label, points in series:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 15 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("updates")
        ax.grid(alpha=0.3)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "training_curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- models and data ----------------------------------------------------------------------------------

@dataclass
class Utterance:
    name: str
    speaker: str
    text: str
    wav: torch.Tensor


def load_subset(data: str, subset: str, limit: int) -> List[Utterance]:
    """The first ``limit`` utterances of ``{data}/{subset}.tsv`` with their ``.wrd`` transcripts (if present)."""
    from fairseq_lite.data.audio import read_audio
    from fairseq_lite.data.manifest import load_manifest

    manifest = load_manifest(os.path.join(data, f"{subset}.tsv"))
    words_path = os.path.join(data, f"{subset}.wrd")
    texts = open(words_path, encoding="utf-8").read().splitlines() if os.path.exists(words_path) else []
    utterances = []
    for i in range(min(limit, len(manifest.sizes))):
        name = os.path.splitext(os.path.basename(manifest.names[i]))[0]
        wav = torch.from_numpy(read_audio(manifest.full_path(i), 16000))
        utterances.append(Utterance(name, name.split("-")[0], texts[i] if i < len(texts) else "", wav))
    return utterances


class Encoder:
    """A checkpoint's wav2vec 2.0 network: CNN features, frame embeddings and (for CTC models) the greedy path."""

    def __init__(self, checkpoint: str):
        from fairseq_lite import checkpoint_utils

        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
        self.model = models[0].eval()
        self.normalize = bool(cfg.task.normalize)
        self.is_ctc = hasattr(self.model, "w2v_encoder")
        self.w2v = self.model.w2v_encoder.w2v_model if self.is_ctc else self.model
        self.dictionary = task.target_dictionary if self.is_ctc else None

    def _input(self, wav: torch.Tensor) -> torch.Tensor:
        return (F.layer_norm(wav, wav.shape) if self.normalize else wav)[None]

    @torch.no_grad()
    def cnn_features(self, wav: torch.Tensor) -> np.ndarray:
        """C×T output of the convolutional feature encoder."""
        return self.w2v.feature_extractor(self._input(wav))[0].numpy()

    @torch.no_grad()
    def frames(self, wav: torch.Tensor) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """T×E transformer output and, for a CTC model, the T greedy-path token ids."""
        x = self.w2v.extract_features(self._input(wav))["x"][0]
        path = None
        if self.is_ctc:
            logits = self.model.get_logits({"encoder_out": self.model.w2v_encoder.proj(x)[:, None]})
            path = logits[:, 0].argmax(-1).numpy()
        return x.numpy(), path


# -- pictures of one utterance ------------------------------------------------------------------------

def plot_spectrogram(utt: Utterance, encoders: Dict[str, Encoder], out: str) -> str:
    """spectrogram.png: log-power spectrogram (25 ms windows, 10 ms hop) over the CNN features of each model."""
    spec = torch.stft(utt.wav, n_fft=400, hop_length=160, window=torch.hann_window(400), return_complex=True)
    log_power = (spec.abs() ** 2 + 1e-10).log10().numpy()
    seconds = len(utt.wav) / 16000
    fig, axes = plt.subplots(1 + len(encoders), 1, figsize=(10, 2.6 * (1 + len(encoders))), squeeze=False)
    axes = axes[:, 0]
    axes[0].imshow(log_power, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, 8))
    axes[0].set_title(f"{utt.name}: \"{utt.text}\"", fontsize=9)
    axes[0].set_ylabel("kHz")
    for ax, (name, encoder) in zip(axes[1:], encoders.items()):
        features = encoder.cnn_features(utt.wav)
        features = (features - features.mean(1, keepdims=True)) / (features.std(1, keepdims=True) + 1e-5)
        ax.imshow(features, origin="lower", aspect="auto", cmap="viridis", extent=(0, seconds, 0, features.shape[0]),
                  vmin=-2.5, vmax=2.5)
        ax.set_title(f"CNN features of the {name} model (channels standardised over time)", fontsize=9)
        ax.set_ylabel("channel")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    path = os.path.join(out, "spectrogram.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- frame embeddings ---------------------------------------------------------------------------------

def pca(x: np.ndarray, dims: int = 2) -> np.ndarray:
    """Projection of the centred rows of ``x`` on their top ``dims`` principal axes (SVD)."""
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dims].T


def _affinities(x: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetric t-SNE input affinities: per-point Gaussian bandwidths found by bisection on the perplexity."""
    n = x.shape[0]
    dist = torch.cdist(x, x).pow(2)
    dist.fill_diagonal_(float("inf"))
    target = np.log(perplexity)
    low, high = torch.full((n, 1), 1e-20, dtype=x.dtype), torch.full((n, 1), 1e20, dtype=x.dtype)
    beta = torch.ones(n, 1, dtype=x.dtype)
    for _ in range(64):
        logits = -dist * beta
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(1, keepdim=True)
        too_flat = entropy > target  # entropy too high: narrow the kernel
        low = torch.where(too_flat, beta, low)
        high = torch.where(too_flat, high, beta)
        beta = torch.where(high >= 1e20, beta * 2, (low + high) / 2)
    p = torch.softmax(-dist * beta, dim=1)
    return (p + p.t()) / (2 * n)


def tsne(x: np.ndarray, perplexity: float = 30.0, iterations: int = 400, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008): early exaggeration, momentum and per-coordinate gains."""
    data = torch.from_numpy(pca(x, min(30, x.shape[1], x.shape[0]))).float()
    n = data.shape[0]
    p = _affinities(data, min(perplexity, (n - 1) / 3))
    y = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 1e-4
    velocity, gains = torch.zeros_like(y), torch.ones_like(y)
    learning_rate = max(n / 12.0, 50.0)
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        w = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        w.fill_diagonal_(0.0)
        q = w / w.sum()
        coef = (exaggeration * p - q) * w
        grad = 4.0 * (coef.sum(1, keepdim=True) * y - coef @ y)
        gains = torch.where((grad > 0) != (velocity > 0), gains + 0.2, gains * 0.8).clamp_min(0.01)
        momentum = 0.5 if it < 250 else 0.8
        velocity = momentum * velocity - learning_rate * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y.numpy()


def aligned_frames(utterances: List[Utterance], encoders: Dict[str, Encoder], ctc: Encoder, max_points: int,
                   seed: int = 0) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Embeddings (per model) of the frames where the CTC greedy path emits a letter, and those letters."""
    blank = ctc.dictionary.bos()
    per_model: Dict[str, List[np.ndarray]] = {name: [] for name in encoders}
    letters: List[str] = []
    for utt in utterances:
        _, path = ctc.frames(utt.wav)
        keep = path != blank
        letters += [ctc.dictionary[int(t)] for t in path[keep]]
        for name, encoder in encoders.items():
            x, _ = encoder.frames(utt.wav)
            per_model[name].append(x[: len(path)][keep])
    chosen = np.arange(len(letters))
    if len(letters) > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(len(letters), max_points, replace=False))
    return ({name: np.concatenate(xs)[chosen] for name, xs in per_model.items()},
            [letters[i] for i in chosen])


def plot_points(points: Dict[str, np.ndarray], letters: List[str], title: str, path: str) -> str:
    """Scatter of 2-D points per model, coloured by letter, each letter's centroid labelled."""
    symbols = sorted(set(letters))
    cmap = plt.get_cmap("tab20", 20)
    colours = {s: (cmap(i % 20) if i < 20 else plt.get_cmap("Dark2")(i - 20)) for i, s in enumerate(symbols)}
    fig, axes = plt.subplots(1, len(points), figsize=(6.2 * len(points), 5.6), squeeze=False)
    labels = np.array(letters)
    for ax, (name, xy) in zip(axes[0], points.items()):
        for symbol in symbols:
            sel = labels == symbol
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=colours[symbol], alpha=0.7)
            cx, cy = np.median(xy[sel], axis=0)
            ax.text(cx, cy, symbol, fontsize=11, weight="bold", ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.7, lw=0))
        ax.set_title(f"{name} model", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- utterance similarity -----------------------------------------------------------------------------

def utterance_vectors(utterances: List[Utterance], encoder: Encoder) -> np.ndarray:
    """Unit-length mean of each utterance's frame embeddings."""
    means = np.stack([encoder.frames(u.wav)[0].mean(0) for u in utterances])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def plot_similarity(utterances: List[Utterance], vectors: Dict[str, np.ndarray], out: str) -> str:
    """cosine_similarity.png: utterance × utterance cosine similarity per model, sorted by speaker."""
    order = sorted(range(len(utterances)), key=lambda i: (utterances[i].speaker, utterances[i].name))
    speakers = [utterances[i].speaker for i in order]
    bounds = [i for i in range(1, len(speakers)) if speakers[i] != speakers[i - 1]]
    fig, axes = plt.subplots(1, len(vectors), figsize=(5.4 * len(vectors), 4.6), squeeze=False)
    for ax, (name, v) in zip(axes[0], vectors.items()):
        sim = v[order] @ v[order].T
        image = ax.imshow(sim, cmap="viridis")
        for b in bounds:
            ax.axhline(b - 0.5, color="white", lw=0.8)
            ax.axvline(b - 0.5, color="white", lw=0.8)
        ax.set_title(f"{name} model: mean-pooled frame embeddings", fontsize=9)
        ax.set_xlabel("utterance (sorted by speaker " + ", ".join(dict.fromkeys(speakers)) + ")", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = os.path.join(out, "cosine_similarity.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def nearest_neighbours(utterances: List[Utterance], vectors: np.ndarray, queries: int, k: int) -> List[str]:
    """Text lines: for the first ``queries`` utterances, the ``k`` most cosine-similar other utterances."""
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    lines = []
    for i in range(min(queries, len(utterances))):
        u = utterances[i]
        lines.append(f"{u.name} (speaker {u.speaker}): {u.text}")
        for j in np.argsort(-sim[i])[: min(k, len(utterances) - 1)]:
            v = utterances[j]
            lines.append(f"    {sim[i, j]:.3f}  {v.name} (speaker {v.speaker}): {v.text}")
    return lines


def plot_text(lines: List[str], title: str, path: str) -> str:
    fig = plt.figure(figsize=(12, 0.24 * len(lines) + 0.8))
    fig.text(0.01, 0.98, title, fontsize=10, weight="bold", va="top")
    fig.text(0.01, 0.98 - 0.5 / (0.24 * len(lines) + 0.8), "\n".join(lines), fontsize=8, va="top",
             family="monospace")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- command line -------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--metrics", nargs="*", default=[], metavar="NAME=PATH",
                        help="metrics.jsonl files to plot (a bare path is named after its folder)")
    parser.add_argument("--pretrained", help="wav2vec 2.0 pretraining checkpoint")
    parser.add_argument("--finetuned", help="wav2vec_ctc checkpoint (its greedy path labels the frames)")
    parser.add_argument("--data", help="folder with {subset}.tsv and {subset}.wrd")
    parser.add_argument("--subset", default="test", help="split to embed (default test)")
    parser.add_argument("--max-utterances", type=int, default=60, help="utterances of the subset to use")
    parser.add_argument("--max-points", type=int, default=800, help="frames in the PCA/t-SNE plots")
    parser.add_argument("--neighbour-queries", type=int, default=6, help="utterances listed with their neighbours")
    return parser.parse_args(argv)


def main(argv: Sequence[str] = None) -> List[str]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    written = []
    runs = {}
    for item in args.metrics:
        name, _, path = item.rpartition("=")
        runs[name or os.path.basename(os.path.dirname(os.path.abspath(path)))] = read_metrics(path)
    if runs:
        written.append(plot_curves(runs, args.out))

    encoders = {}
    if args.pretrained:
        encoders["pretrained"] = Encoder(args.pretrained)
    if args.finetuned:
        encoders["fine-tuned"] = Encoder(args.finetuned)
    if encoders and args.data:
        utterances = load_subset(args.data, args.subset, args.max_utterances)
        written.append(plot_spectrogram(utterances[0], encoders, args.out))
        if "fine-tuned" in encoders:
            points, letters = aligned_frames(utterances, encoders, encoders["fine-tuned"], args.max_points)
            where = f"{len(letters)} frames of {len(utterances)} '{args.subset}' utterances"
            written.append(plot_points({n: pca(x) for n, x in points.items()}, letters,
                                       f"PCA of frame embeddings ({where}), coloured by the greedy CTC letter",
                                       os.path.join(args.out, "embeddings_pca.png")))
            written.append(plot_points({n: tsne(x) for n, x in points.items()}, letters,
                                       f"t-SNE of frame embeddings ({where}), coloured by the greedy CTC letter",
                                       os.path.join(args.out, "embeddings_tsne.png")))
        vectors = {name: utterance_vectors(utterances, e) for name, e in encoders.items()}
        written.append(plot_similarity(utterances, vectors, args.out))
        name = next(iter(vectors))
        lines = nearest_neighbours(utterances, vectors[name], args.neighbour_queries, 3)
        with open(os.path.join(args.out, "nearest_neighbours.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        written.append(plot_text(lines, f"nearest-neighbour utterances (cosine of mean-pooled {name} embeddings)",
                                 os.path.join(args.out, "nearest_neighbours.png")))
    written = [p for p in written if p]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
