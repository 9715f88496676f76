"""CTC inference with fairseq's ``examples/speech_recognition/infer.py`` command line::

    python examples/speech_recognition/infer.py /path/to/data --task audio_finetuning \\
        --nbest 1 --path /path/to/model --gen-subset dev_other --results-path /path/to/results \\
        --w2l-decoder kenlm --lexicon lexicon.lst --lm-model kenlm.bin --lm-weight 2 --word-score -1 \\
        --sil-weight 0 --criterion ctc --labels ltr --max-tokens 4000000 --post-process letter

The generic flags (task, ``--path``, ``--gen-subset``, ``--results-path``, ``--max-tokens``, ``--beam``,
``--nbest``, ``--lm-weight``, ``--post-process``, ``--model-overrides``, ``--cpu``, ``--fp16``, ``--bf16`` …) come
from the same dataclasses as ``fairseq-train``'s; the decoding flags are fairseq's infer.py ones plus ``--chunk-seconds``
/ ``--chunk-overlap`` (long audio) and ``--decode-workers``. The task is built from the command line (so
CTC checkpoints saved under ``audio_pretraining`` load) and its target dictionary is the checkpoint's when it
stores one, else ``dict.{labels}.txt`` in the data folder.

With ``--results-path`` it writes fairseq's four files ``{hypo.word,hypo.units,ref.word,ref.units}-
{checkpoint}-{subset}.txt`` (one ``<text> (None-<id>)`` line per utterance, in batch order), plus
``timestamps-{checkpoint}-{subset}.ctm`` (one CTM line per hypothesis word: utterance, channel 1, start
and duration in seconds) and ``results-{checkpoint}-{subset}.jsonl`` (one JSON object per utterance).
It logs ``WER: x`` (100 · word edits / reference words over the subset) and fairseq's throughput lines.
Every output (these files and ``--dump-emissions``) is written to a temporary file beside it and renamed
when the run succeeds: a rerun that fails leaves the earlier results as they were (fairseq empties them first).

``--dump-emissions FILE`` writes the emissions the decoder would see (``get_logits``: raw CTC logits with
padding forced to blank; fairseq dumps log-softmax instead, which its decoders do not use) and stops;
``--load-emissions FILE`` decodes from such a file. The file is a numpy ``.npz`` (no pickle), unlike
fairseq's pickled object array, which is refused.

MMS (per-language adapters): ``--gen-subset eng:dev`` decodes ``dev`` as the language ``eng`` (fairseq's spelling),
and ``--lang eng --gen-subset dev`` is the same. The languages are ``task.multi_corpus_keys`` of the command line or
else the checkpoint's; the batch's ``corpus_key`` picks the adapter row; ``{data}/dict/<lang>.txt`` (the layout of
MMS's ``dict/<model>/<lang>.txt`` downloads), when present, is the target dictionary; fairseq's released files,
whose languages live in ``state["adapter"][lang]``, load that language's adapters, output layer and dictionary.

The decoding functions here (``open_subset``, ``make_decoder``, ``decode_batches``, ``report``, ``ResultWriter``) are
also those of fairseq's Hydra front end ``examples/speech_recognition/new/infer.py`` (``cli/hydra_infer.py``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import math
import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.data_utils import post_process
from fairseq_lite.data.multi_corpus import names_corpora, parse_corpus_keys, split_keys
from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.dataclass.legacy_parser import build_help, parse_legacy_args
from fairseq_lite.decoding import W2L_DECODER_CHOICES, ErrorCounter, build_decoder, edit_distance, word_spans
from fairseq_lite.errors import CheckpointError, ConfigError, DataError, FairseqLiteError
from fairseq_lite.file_io import AtomicOutputs
from fairseq_lite.inference_precision import autocast, inference_device, inference_precision

logger = logging.getLogger("fairseq_lite.infer")

RESULT_PREFIXES = {"hypo.words": "hypo.word", "hypo.units": "hypo.units", "ref.words": "ref.word",
                   "ref.units": "ref.units"}
#: Input samples per output frame of wav2vec 2.0's CNN (20 ms at 16 kHz)
BASE_FRAME_STRIDE = 320
#: Registered models whose checkpoints infer.py decodes (they emit CTC frames over the target dictionary).
CTC_MODELS = ("wav2vec_ctc", "hubert_ctc", "w2v_bert_ctc")
DEFAULT_MAX_TOKENS = 4_000_000  # fairseq's infer.py default when neither --max-tokens nor --batch-size is set
DEFAULT_DECODE_WORKERS = min(4, os.cpu_count() or 1)
#: How each utterance is logged when not quiet: (hypothesis line, reference line, separator), fairseq's infer.py
LEGACY_ECHO = ("HYPO:%s", "TARGET:%s", "___________________")


def decoding_parser() -> argparse.ArgumentParser:
    """infer.py's own flags (fairseq's names and defaults); everything else goes to the generic parser."""
    parser = argparse.ArgumentParser(prog="infer.py", add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("decoding (examples/speech_recognition/infer.py)")
    group.add_argument("--w2l-decoder", choices=W2L_DECODER_CHOICES, help="CTC decoder")
    group.add_argument("--lexicon", help="flashlight lexicon: WORD<TAB>S P E L L I N G | per line")
    group.add_argument("--lm-model", "--kenlm-model", dest="kenlm_model",
                       help="KenLM binary/ARPA file (kenlm) or fairseq LM checkpoint (fairseqlm)")
    group.add_argument("--unit-lm", action="store_true", help="the LM is over output units: lexicon-free decoding")
    group.add_argument("--word-score", type=float, default=1.0, help="word insertion score")
    group.add_argument("--unk-weight", type=float, default=-math.inf, help="unknown word score")
    group.add_argument("--sil-weight", type=float, default=0.0, help="silence score")
    group.add_argument("--beam-threshold", type=float, default=25.0, help="beam score threshold")
    group.add_argument("--beam-size-token", type=int, default=100, help="tokens considered per frame")
    group.add_argument("--dump-emissions", help="write the emissions to this .npz file and stop")
    group.add_argument("--load-emissions", help="decode emissions written by --dump-emissions")
    group.add_argument("--dump-features", help="not supported: use scripts/extract_features.py")
    group.add_argument("--wfstlm", help="not supported: WFST decoding")
    group.add_argument("--kspmodel", help="not supported: sentencepiece model for seq2seq targets")
    group.add_argument("--rnnt_decoding_type", default="greedy", help="accepted for fairseq commands; unused")
    group.add_argument("--rnnt_len_penalty", type=float, default=-0.5, help="accepted for fairseq commands; unused")
    group.add_argument("--chunk-seconds", type=float, help="transcribe audio in windows of this many seconds")
    group.add_argument("--chunk-overlap", type=float, default=2.0,
                       help="seconds shared by neighbouring windows; each keeps the frames nearer its centre")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="fully unpickle --path/--lm-model files that hold objects beyond fairseq's allow-list "
                            "(only for files you trust: unpickling can run code)")
    group.add_argument("--decode-workers", type=int, default=DEFAULT_DECODE_WORKERS,
                       help="threads decoding utterances in parallel (kenlm)")
    group.add_argument("--lang", help="MMS: decode --gen-subset as this language (--gen-subset eng:dev alike)")
    return parser


def parse_args(argv: Sequence[str]) -> Tuple[argparse.Namespace, Any]:
    """(decoding flags, finalised FairseqConfig) of an infer.py command line."""
    args, rest = decoding_parser().parse_known_args(list(argv))
    for flag in ("dump_features", "wfstlm", "kspmodel"):
        if getattr(args, flag):
            raise ConfigError(f"--{flag.replace('_', '-')} is not supported by fairseq_lite's infer.py")
    cfg_dict = parse_legacy_args(rest, prog="infer.py")
    task = cfg_dict.get("task")
    if not task:
        raise ConfigError("infer.py needs --task audio_finetuning and the data folder as the first argument")
    as_finetuning_task(task)
    cfg = finalize_config(cfg_dict)
    if not cfg.common_eval.path and not args.load_emissions:
        raise ConfigError("infer.py needs --path /path/to/checkpoint.pt")
    if args.w2l_decoder is None and not args.dump_emissions:
        raise ConfigError(f"choose a decoder: --w2l-decoder {{{','.join(W2L_DECODER_CHOICES)}}}")
    if args.chunk_seconds is not None and not 0 <= args.chunk_overlap < args.chunk_seconds:
        raise ConfigError("--chunk-overlap must be at least 0 and shorter than --chunk-seconds")
    if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
        cfg.dataset.max_tokens = DEFAULT_MAX_TOKENS
    cfg.dataset.gen_subset = language_subset(cfg.dataset.gen_subset, args.lang, "--lang")
    check_flags(args, cfg)
    return args, cfg


def check_flags(args: argparse.Namespace, cfg: Any) -> None:
    """Counts that must be positive, and output paths of the right kind, before any model is loaded."""
    counts = {"--beam": cfg.generation.beam, "--nbest": cfg.generation.nbest,
              "--beam-size-token": args.beam_size_token, "--decode-workers": args.decode_workers}
    for flag, value in counts.items():
        if value is None or value < 1:
            raise ConfigError(f"{flag} must be a positive number, got {value}")
    if cfg.common_eval.results_path:
        check_output_dir(cfg.common_eval.results_path, "--results-path")
    if args.dump_emissions and os.path.isdir(args.dump_emissions):
        raise ConfigError(f"--dump-emissions {args.dump_emissions} is a folder: give a file name, e.g. "
                          f"{os.path.join(args.dump_emissions, 'emissions.npz')}")


# -- model and emissions ------------------------------------------------------------------------


def frame_stride(model: torch.nn.Module) -> int:
    """Input samples per output frame: the product of the strides of the convolutional feature extractor."""
    stride = 1
    for name, module in model.named_modules():
        if "feature_extractor" in name and isinstance(module, torch.nn.Conv1d):
            stride *= module.stride[0]
    return stride


class EmissionModel:
    """The CTC model on its device: batches (or long waveforms in windows) → (B, T, V) emissions + lengths."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32"):
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision
        self.stride = frame_stride(model)

    @torch.inference_mode()
    def __call__(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor],
                 corpus_key: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
        net_input = {"source": source.to(self.device)}
        if padding_mask is not None:
            net_input["padding_mask"] = padding_mask.to(self.device)
        if corpus_key is not None:  # MMS: the language's adapters
            net_input["corpus_key"] = corpus_key
        with autocast(self.device, self.precision):
            net_output = self.model(**net_input)
            if hasattr(self.model, "get_logits"):
                logits = self.model.get_logits(net_output)
            else:
                logits = self.model.get_normalized_probs(net_output, log_probs=True)
        emissions = logits.transpose(0, 1).float().cpu()
        out_padding = net_output.get("padding_mask")
        if out_padding is None:
            lengths = torch.full((emissions.size(0),), emissions.size(1), dtype=torch.long)
        else:
            lengths = (~out_padding).sum(dim=1).cpu()
        return emissions, lengths

    def of_batch(self, sample: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Emissions and frame counts of a batch from the task's collater (its ``net_input``)."""
        net_input = sample["net_input"]
        return self(net_input["source"], net_input.get("padding_mask"), net_input.get("corpus_key"))

    def chunked(self, wav: torch.Tensor, window: int, overlap: int, max_tokens: Optional[int],
                corpus_key: Optional[int] = None) -> torch.Tensor:
        """(T, V) emissions of one long waveform from overlapping windows (``--chunk-seconds/--chunk-overlap``).

        Windows start at multiples of the frame stride, so window frame ``t`` is global frame ``start/stride +
        t``; the last window ends at the end of the audio (no padding, which would change the CNN's group
        norm), and neighbouring windows hand over in the middle of their overlap, so each frame comes from
        the window where it is farther from an edge. The total is exactly the unchunked number of frames.
        ``corpus_key`` is the waveform's language index (MMS adapters), None without languages.
        """
        stride, length = self.stride, len(wav)
        window = max(stride, window // stride * stride)
        hop = (window - overlap) // stride * stride
        if hop <= 0:
            raise ConfigError("--chunk-overlap is too large for --chunk-seconds: leave at least one frame per window")
        starts = [0]
        while starts[-1] + window < length:
            starts.append(starts[-1] + hop)
        if len(starts) > 1:
            last = (length - window) // stride * stride
            starts[-1:] = [last] if last > starts[-2] else []  # equal: the previous window becomes the last
        ends = [start + window for start in starts[:-1]] + [length]
        handover = [(nxt + end) // 2 // stride for nxt, end in zip(starts[1:], ends[:-1])]
        per_batch = max(1, (max_tokens or window) // window)
        pieces = []
        groups = [list(range(i, min(i + per_batch, len(starts) - 1))) for i in range(0, len(starts) - 1, per_batch)]
        for group in groups + [[len(starts) - 1]]:
            batch = torch.stack([wav[starts[k] : ends[k]] for k in group])
            emissions, lengths = self(batch, None, None if corpus_key is None else [corpus_key] * len(group))
            for row, k in enumerate(group):
                offset = starts[k] // stride
                begin = handover[k - 1] - offset if k > 0 else 0
                end = handover[k] - offset if k < len(handover) else int(lengths[row])
                pieces.append(emissions[row, begin:end])
        return torch.cat(pieces)


def load_emission_file(path: str, vocab_size: int) -> Tuple[Dict[int, torch.Tensor], Optional[int]]:
    """id → (T, V) emissions from a ``--dump-emissions`` file, and the model's input samples per frame (None in
    files written before the dumps stored it)."""
    if not os.path.isfile(path):
        raise DataError(f"--load-emissions {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, lengths, emissions = data["ids"], data["lengths"], data["emissions"]
            stride = int(data["frame_stride"]) if "frame_stride" in data.files else None
    except ValueError as err:
        raise DataError(f"{path} is not a fairseq_lite emissions file ({err}); fairseq's pickled dumps are not "
                        "read: write one with infer.py --dump-emissions") from None
    except KeyError as err:
        raise DataError(f"{path} lacks the {err} array; write it with infer.py --dump-emissions") from None
    if emissions.shape[1] != vocab_size:
        raise DataError(f"{path} has emissions over {emissions.shape[1]} units but the dictionary has {vocab_size}")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    table = torch.from_numpy(emissions)
    return {int(i): table[offsets[k] : offsets[k + 1]] for k, i in enumerate(ids)}, stride


def save_emission_file(outputs: AtomicOutputs, path: str, emissions: Dict[int, torch.Tensor],
                       frame_stride: int) -> None:
    """Write the ``--dump-emissions`` file (it replaces ``path`` when ``outputs`` is committed)."""
    ids = sorted(emissions)
    with outputs.open(path, "wb") as f:  # a file object keeps the exact name (np.savez would append .npz)
        np.savez(f, ids=np.asarray(ids, dtype=np.int64), frame_stride=np.int64(frame_stride),
                 lengths=np.asarray([len(emissions[i]) for i in ids], dtype=np.int64),
                 emissions=torch.cat([emissions[i] for i in ids]).numpy() if ids else np.zeros((0, 0), np.float32))


def stored_emissions(loaded: Dict[int, torch.Tensor], ids: List[int], path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (B, T, V) emissions and lengths of utterances ``ids`` from a ``--load-emissions`` file."""
    missing = [i for i in ids if i not in loaded]
    if missing:
        raise DataError(f"{path} has no emissions for utterances {missing[:5]}: dump them from the same subset")
    return pad_emissions([loaded[i] for i in ids])


def pad_emissions(rows: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.zeros(len(rows), int(lengths.max()) if rows else 0, rows[0].size(1) if rows else 0)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths


# -- outputs ------------------------------------------------------------------------------------


class ResultWriter:
    """fairseq's four result files (``texts``: hypo.words/hypo.units/ref.words/ref.units → path), and optionally
    the CTM timestamps and the JSON-lines file, written through ``outputs`` (temporary files that replace the
    results of an earlier run only when decoding succeeds)."""

    def __init__(self, outputs: AtomicOutputs, texts: Dict[str, str], ctm: Optional[str] = None,
                 jsonl: Optional[str] = None):
        def result_file(path: Optional[str]):
            return outputs.open(path, "w", encoding="utf-8") if path else None

        self.files = {key: result_file(path) for key, path in texts.items()}
        self.ctm = result_file(ctm)
        self.jsonl = result_file(jsonl)

    def write(self, utt: str, texts: Dict[str, str], spans, record: Dict[str, Any]) -> None:
        for key, text in texts.items():
            print(f"{text} ({utt})", file=self.files[key])
        if self.ctm is not None:
            for span in spans:
                print(f"{utt} 1 {span.start:.3f} {span.end - span.start:.3f} {span.word}", file=self.ctm)
        if self.jsonl is not None:
            print(json.dumps(record, ensure_ascii=False), file=self.jsonl)


def legacy_result_writer(outputs: AtomicOutputs, folder: str, checkpoint: str, subset: str,
                         shard_prefix: str) -> ResultWriter:
    """infer.py's files: ``{hypo.word,hypo.units,ref.word,ref.units}-{checkpoint}-{subset}.txt``,
    ``timestamps-….ctm`` and ``results-….jsonl`` in ``folder`` (``shard_prefix`` first when sharded)."""
    name = f"{os.path.basename(checkpoint)}-{subset}"

    def path(file_name: str) -> str:
        return os.path.join(folder, shard_prefix + file_name)

    return ResultWriter(outputs, {key: path(f"{prefix}-{name}.txt") for key, prefix in RESULT_PREFIXES.items()},
                        ctm=path(f"timestamps-{name}.ctm"), jsonl=path(f"results-{name}.jsonl"))


# -- main ---------------------------------------------------------------------------------------


def read_ctc_checkpoint(cfg: Any, trust_checkpoint: bool = False) -> Tuple[str, Dict[str, Any]]:
    """(path, contents) of the first checkpoint of ``common_eval.path`` (``--path``, ``\\``-separated as in fairseq)
    with ``model_overrides``; it must hold a model that emits CTC frames (``wav2vec_ctc``, ``hubert_ctc``), not a
    pretraining or language model."""
    from fairseq_lite import checkpoint_utils

    paths = cfg.common_eval.path.split("\\")
    if len(paths) > 1:
        logger.warning("infer.py decodes with one model: using %s of %d", paths[0], len(paths))
    try:  # fairseq reads it with ast.literal_eval, which evaluates literals only
        overrides = ast.literal_eval(cfg.common_eval.model_overrides or "{}")
    except (ValueError, SyntaxError):
        overrides = None
    if not isinstance(overrides, dict):
        raise ConfigError(f"--model-overrides must be a dict literal such as \"{{'dropout': 0.0}}\", "
                          f"got {cfg.common_eval.model_overrides!r}")
    path = checkpoint_utils.checkpoint_with_suffix(paths[0], cfg.checkpoint.checkpoint_suffix)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist (--path)")
    state = checkpoint_utils.load_checkpoint_to_cpu(path, overrides, trust_checkpoint=trust_checkpoint)
    kind = (state["cfg"].get("model") or {}).get("_name")
    if kind not in CTC_MODELS:
        raise CheckpointError(
            f"{path} holds a {kind!r} model, not a fine-tuned CTC model ({', '.join(CTC_MODELS)}): "
            "infer.py decodes CTC emissions; fine-tune it first (config/finetuning, model.w2v_path=<it>)")
    return path, state


def load_lm(path: Optional[str], trust_checkpoint: bool = False, key: str = "--lm-model"):
    """The fairseq LM checkpoint ``path`` (``key`` names the option in messages) and its dictionary (``dict.txt``
    beside it, or its own)."""
    from fairseq_lite import checkpoint_utils

    if not path:
        raise ConfigError(f"the fairseqlm decoder needs {key} <LM checkpoint>")
    if not os.path.isfile(path):
        raise CheckpointError(f"LM checkpoint {path} does not exist ({key})")
    models, _, lm_task = checkpoint_utils.load_model_ensemble_and_task(
        [path], arg_overrides={"data": os.path.dirname(os.path.abspath(path))}, trust_checkpoint=trust_checkpoint)
    return models[0].eval(), lm_task.target_dictionary


def dataset_task_cfg(cli_task_cfg: Any, saved_cfg: Any) -> Any:
    """The command line's task config, with the sample rate and normalisation the model was trained with, and its
    languages (``multi_corpus_keys``, MMS) when the command line names none (fairseq reads the subset with the
    saved task config)."""
    saved = getattr(saved_cfg, "task", None)
    updates = {key: getattr(saved, key) for key in ("normalize", "sample_rate") if hasattr(saved, key)}
    if getattr(cli_task_cfg, "multi_corpus_keys", None) is None and getattr(saved, "multi_corpus_keys", None):
        updates["multi_corpus_keys"] = saved.multi_corpus_keys
    return dataclasses.replace(cli_task_cfg, **updates)


def language_subset(subset: str, lang: Optional[str], flag: str) -> str:
    """``subset`` as MMS's ``<lang>:<subset>`` for the language ``lang`` given by ``flag`` (``--lang``, ``lang=``);
    unchanged without one. A subset that already names another language is an error."""
    if not lang:
        return subset
    named = split_keys(subset)
    if named - {lang}:
        raise ConfigError(f"{flag} {lang} but the subset {subset} names {', '.join(sorted(named))}: give one of them")
    return subset if named else ",".join(f"{lang}:{entry}" for entry in subset.split(","))


def subset_languages(subset: str, task_cfg: Any) -> List[str]:
    """The languages a ``key:file`` subset names, each checked against the model's ``multi_corpus_keys`` (one
    line listing the known ones otherwise); [] for a plain subset (or a file whose name holds a colon)."""
    if not names_corpora(task_cfg.data, subset):
        return []
    named = [entry.partition(":")[0] for entry in subset.split(",")]
    keys = parse_corpus_keys(task_cfg.multi_corpus_keys) if task_cfg.multi_corpus_keys else []
    if not keys:
        raise ConfigError(f"the subset {subset} names a language but the model has none (its task.multi_corpus_keys "
                          "is unset): decode a plain subset, without --lang / lang=")
    unknown = [key for key in named if key not in keys]
    if unknown:
        raise ConfigError(f"unknown language {unknown[0]!r} (subset {subset}): the model knows {', '.join(keys)}")
    return named


def use_language_dictionary(task: Any, task_cfg: Any, languages: List[str]) -> None:
    """MMS's per-language dictionaries: ``{data}/dict/<lang>.txt`` (the layout of fairseq's ``dict/<model>/<lang>.txt``
    downloads), when present, replaces the checkpoint's target dictionary; it must have as many symbols."""
    from fairseq_lite.data import Dictionary

    paths = {lang: os.path.join(task_cfg.data, "dict", f"{lang}.txt") for lang in languages}
    present = {lang: path for lang, path in paths.items() if os.path.isfile(path)}
    if not present:
        return
    if len(present) < len(languages) or len(set(present.values())) > 1:
        raise ConfigError(f"the subset names {', '.join(languages)}, which have different dictionaries "
                          f"({', '.join(present.values())}): decode one language at a time")
    path = next(iter(present.values()))
    dictionary = Dictionary.load(path)
    if task.target_dictionary is not None and len(dictionary) != len(task.target_dictionary):
        raise DataError(f"{path} has {len(dictionary)} symbols but the model's output layer has "
                        f"{len(task.target_dictionary)}: it is another model's dictionary")
    logger.info("target dictionary of %s: %s", ", ".join(present), path)
    task.load_state_dict({"target_dictionary": dictionary})


def main(argv: List[str]) -> Optional[int]:
    if "-h" in argv or "--help" in argv:
        print(decoding_parser().format_help())
        print(build_help([a for a in argv if a not in ("-h", "--help")], prog="infer.py"))
        return 0
    setup_logging()
    try:
        args, cfg = parse_args(argv)
        return run(args, cfg)
    except FairseqLiteError as err:
        message = with_infer_flags(str(err))
        if message == str(err):
            raise
        raise type(err)(message) from err


_TASK_SETTING = re.compile(r"\b(set )?task\.(\w+)=true\b")


def with_infer_flags(message: str) -> str:
    """A message's ``set task.skip_invalid_audio=true`` advice in infer.py's spelling: ``pass --skip-invalid-audio``."""
    return _TASK_SETTING.sub(lambda m: ("pass " if m.group(1) else "") + "--" + m.group(2).replace("_", "-"), message)


def make_decoder(kind: str, tgt_dict: Any, decoder_cfg: Any, lm_path: Optional[str], trust_checkpoint: bool = False,
                 lm_key: str = "--lm-model") -> Any:
    """The CTC decoder ``kind`` (viterbi, kenlm, or fairseqlm with its transformer LM loaded from ``lm_path``) over
    ``tgt_dict``; ``decoder_cfg`` is a flashlight.DecoderConfig (None for viterbi)."""
    lm_model = lm_dict = None
    if kind == "fairseqlm":
        lm_model, lm_dict = load_lm(lm_path, trust_checkpoint, lm_key)
    return build_decoder(kind, tgt_dict, decoder_cfg, lm_model, lm_dict)


def run(args: argparse.Namespace, cfg: Any) -> int:
    """Decode (or dump the emissions of) the subset; every output file replaces the old one only on success."""
    task, dataset, task_cfg, emitter = open_subset(cfg, args.trust_checkpoint)
    tgt_dict = task.target_dictionary
    subset = cfg.dataset.gen_subset
    loaded, stored_stride = load_emission_file(args.load_emissions, len(tgt_dict)) if args.load_emissions else (
        None, None)
    if loaded is None and emitter is None:
        raise ConfigError("infer.py needs --path (a checkpoint) or --load-emissions")
    decoder = None if args.dump_emissions else make_decoder(args.w2l_decoder, tgt_dict, decoder_config(args, cfg),
                                                            args.kenlm_model, args.trust_checkpoint)
    stride = emitter.stride if emitter is not None else stored_stride
    if stride is None:
        stride = BASE_FRAME_STRIDE
        logger.warning("%s does not say its frame stride: timestamps assume %d samples per frame (wav2vec 2.0's "
                       "CNN); dump it again to store the stride", args.load_emissions, stride)

    def emissions_of(sample: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        if loaded is not None:
            return stored_emissions(loaded, sample["id"].tolist(), args.load_emissions)
        if args.chunk_seconds:
            rate = task_cfg.sample_rate
            window, overlap = int(args.chunk_seconds * rate), int(args.chunk_overlap * rate)
            return pad_emissions(chunk_rows(emitter, sample, window, overlap, cfg.dataset.max_tokens))
        return emitter.of_batch(sample)

    with AtomicOutputs() as outputs:
        writer = None
        if cfg.common_eval.results_path and not args.dump_emissions:
            shard = f"{cfg.dataset.shard_id}_" if cfg.dataset.num_shards > 1 else ""
            writer = legacy_result_writer(outputs, cfg.common_eval.results_path,
                                          cfg.common_eval.path or args.load_emissions, subset, shard)
        progress = tqdm(total=len(dataset), desc="infer", unit="utt", disable=cfg.common.no_progress_bar)
        with progress:
            if args.dump_emissions:
                dumped = dump_batches(batch_iterator(task, dataset, cfg), emissions_of, progress)
                save_emission_file(outputs, args.dump_emissions, dumped, emitter.stride)
            else:
                context = ReportContext(tgt_dict, cfg, ErrorCounter(), writer, stride / task_cfg.sample_rate, dataset)
                stats = decode_batches(batch_iterator(task, dataset, cfg), emissions_of, decoder, args.decode_workers,
                                       context, progress)
    if args.dump_emissions:
        logger.info("wrote the emissions of %d utterances to %s", len(dumped), args.dump_emissions)
        return 0
    num_sentences, num_tokens, elapsed = stats
    logger.info("WER: %s", context.counter.wer)
    elapsed = max(elapsed, 1e-9)
    logger.info("| Processed %d sentences (%d tokens) in %.1fs (%.2f sentences/s, %.2f tokens/s)",
                num_sentences, num_tokens, elapsed, num_sentences / elapsed, num_tokens / elapsed)
    logger.info("| Generate %s with beam=%d", subset, cfg.generation.beam)
    return 0


def as_finetuning_task(task: Any) -> Any:
    """A task config (dict or DictConfig) that names ``audio_pretraining``, as older fairseq docs do for CTC
    decoding, renamed ``audio_finetuning`` in place (the labels live there now); returned for chaining."""
    if task.get("_name") == "audio_pretraining":
        task["_name"] = "audio_finetuning"
    return task


def load_task_and_model(cfg: Any, trust_checkpoint: bool = False,
                        checkpoint: Optional[Tuple[str, Dict[str, Any]]] = None
                        ) -> Tuple[Any, Optional[torch.nn.Module], Any, Optional[Dict[str, Any]]]:
    """(task, CTC model or None without ``common_eval.path``, the task config the subset is read with, the
    per-language entries ``state["adapter"]`` of an MMS file such as mms1b_all.pt, else None).

    The task is ``cfg.task``'s, the model is built on it (fairseq's ``load_model_ensemble(task=...)``);
    ``checkpoint`` is the ``read_ctc_checkpoint`` result when the caller has read it already."""
    from fairseq_lite import checkpoint_utils
    from fairseq_lite.tasks import setup_task

    task = setup_task(cfg.task)
    model = saved_cfg = adapters = None
    if cfg.common_eval.path:
        path, state = checkpoint or read_ctc_checkpoint(cfg, trust_checkpoint)
        models, saved_cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], task=task, state=state)
        model, adapters = models[0], state.get("adapter") or None
    if task.target_dictionary is None:
        raise ConfigError("no target dictionary: set the task's labels (--labels ltr, task.labels=ltr) with "
                          "dict.ltr.txt in the data folder")
    return task, model, dataset_task_cfg(task.cfg, saved_cfg), adapters


def load_language_adapter(model: torch.nn.Module, task: Any, task_cfg: Any, adapters: Dict[str, Any],
                          subset: str) -> str:
    """fairseq's MMS files keep each language's adapters, output layer and dictionary in ``state["adapter"][lang]``
    (``model`` and ``task_state``): put the subset's language into the model and the task, as fairseq's
    new/infer.py does, and return the subset under the file's own corpus key (whose adapter row now holds it)."""
    named = split_keys(subset)
    if len(named) != 1 or "," in subset:
        raise ConfigError(f"{subset}: this MMS file holds {len(adapters)} languages, one decoded at a time: give "
                          "one, e.g. --gen-subset eng:dev or lang=eng")
    lang = named.pop()
    if lang not in adapters:
        raise ConfigError(f"unknown language {lang!r} (subset {subset}): the model knows {', '.join(sorted(adapters))}")
    weights, params = adapters[lang]["model"], dict(model.named_parameters())
    proj = weights.get("w2v_encoder.proj.weight")
    if proj is not None:  # a language's output layer has its own dictionary's size
        model.w2v_encoder.proj = torch.nn.Linear(proj.size(1), proj.size(0)).to(params["w2v_encoder.proj.weight"])
        params = dict(model.named_parameters())
    wrong = [k for k, v in weights.items() if k not in params or params[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"the {lang} adapter of the checkpoint does not fit its model: {wrong[0]} (and "
                              f"{len(wrong) - 1} more) missing or of another shape")
    with torch.no_grad():
        for key, value in weights.items():
            params[key].copy_(value)
    task.load_state_dict(adapters[lang].get("task_state") or {})
    logger.info("loaded the %s adapter (%d tensors)", lang, len(weights))
    return f"{parse_corpus_keys(task_cfg.multi_corpus_keys)[0]}:{subset.partition(':')[2]}"


def open_subset(cfg: Any, trust_checkpoint: bool = False, checkpoint: Optional[Tuple[str, Dict[str, Any]]] = None
                ) -> Tuple[Any, Any, Any, Optional[EmissionModel]]:
    """(task, dataset of ``dataset.gen_subset``, its task config, the model's EmissionModel or None): what both
    front ends (infer.py and new/infer.py) decode from. The model runs on CUDA unless ``common.cpu``, under
    autocast with ``common.fp16`` (CUDA) or ``common.bf16``."""
    task, model, task_cfg, adapters = load_task_and_model(cfg, trust_checkpoint, checkpoint)
    subset = cfg.dataset.gen_subset
    if adapters and ":" in subset:
        languages = [subset.partition(":")[0]]
        subset = load_language_adapter(model, task, task_cfg, adapters, subset)
    else:
        languages = subset_languages(subset, task_cfg)
    if languages:
        use_language_dictionary(task, task_cfg, languages)
    task.load_dataset(subset, task_cfg=task_cfg)
    dataset = task.dataset(subset)
    logger.info("%s %s: %d examples", cfg.task.data, subset, len(dataset))
    device = inference_device(cfg.common.cpu)
    precision = inference_precision(cfg.common.fp16, cfg.common.bf16, device)
    emitter = EmissionModel(model, device, precision) if model is not None else None
    return task, dataset, task_cfg, emitter


def batch_iterator(task: Any, dataset: Any, cfg: Any):
    """The subset's batches in order (``--max-tokens``/``--batch-size``, sharding, workers)."""
    return task.get_batch_iterator(
        dataset=dataset,
        max_tokens=cfg.dataset.max_tokens,
        max_sentences=cfg.dataset.batch_size,
        max_positions=task.max_positions(),
        ignore_invalid_inputs=cfg.dataset.skip_invalid_size_inputs_valid_test,
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        num_shards=cfg.dataset.num_shards,
        shard_id=cfg.dataset.shard_id,
        num_workers=cfg.dataset.num_workers,
        disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=False)


def dump_batches(itr, emissions_of, progress) -> Dict[int, torch.Tensor]:
    """id → (T, V) emissions of every utterance (``--dump-emissions``)."""
    dumped: Dict[int, torch.Tensor] = {}
    for sample in itr:
        if not sample:
            continue
        emissions, lengths = emissions_of(sample)
        for row, i in enumerate(sample["id"].tolist()):
            dumped[i] = emissions[row, : int(lengths[row])].clone()
        progress.update(len(sample["id"]))
    return dumped


def decode_batches(itr, emissions_of, decoder, num_workers: int, context: "ReportContext",
                   progress) -> Tuple[int, int, float]:
    """Decode, score and write every utterance; returns (sentences, hypothesis tokens, model + decoder seconds)."""
    num_sentences = num_tokens = 0
    elapsed = 0.0
    for sample in itr:
        if not sample:
            continue
        ids = sample["id"].tolist()
        started = time.perf_counter()
        emissions, lengths = emissions_of(sample)
        hypos = decoder.decode(emissions, lengths, num_workers=num_workers)
        elapsed += time.perf_counter() - started
        for row, i in enumerate(ids):
            target = sample["target"][row, : int(sample["target_lengths"][row])]
            num_tokens += len(hypos[row][0].tokens)
            report(i, hypos[row], target, context)
        num_sentences += len(ids)
        progress.update(len(ids))
    return num_sentences, num_tokens, elapsed


def decoder_config(args: argparse.Namespace, cfg: Any):
    """flashlight.DecoderConfig from the flags (``--beam``, ``--nbest``, ``--lm-weight`` are generation's)."""
    if args.w2l_decoder == "viterbi":
        return None
    from fairseq_lite.decoding.flashlight import DecoderConfig

    gen = cfg.generation
    return DecoderConfig(nbest=gen.nbest, beam=gen.beam, beam_threshold=args.beam_threshold,
                         beam_size_token=args.beam_size_token, lm_weight=gen.lm_weight, word_score=args.word_score,
                         unk_weight=args.unk_weight, sil_weight=args.sil_weight, lexicon=args.lexicon,
                         kenlm_model=args.kenlm_model, unit_lm=args.unit_lm)


def chunk_rows(emitter: EmissionModel, sample: Dict[str, Any], window: int, overlap: int,
               max_tokens: Optional[int]) -> List[torch.Tensor]:
    """Windowed emissions of each waveform of a batch (its valid samples only)."""
    source = sample["net_input"]["source"]
    padding = sample["net_input"].get("padding_mask")
    keys = sample["net_input"].get("corpus_key")
    rows = []
    for b in range(source.size(0)):
        length = int((~padding[b]).sum()) if padding is not None else source.size(1)
        key = None if keys is None else int(keys[b])
        rows.append(emitter.chunked(source[b, :length], window, overlap, max_tokens, key))
    return rows


def hypothesis_text(hypo, tgt_dict, post: Optional[str]) -> Tuple[str, str]:
    """(units, words) of a hypothesis: its lexicon words when it has them, else the post-processed units."""
    units = tgt_dict.string(hypo.tokens.int())
    return units, " ".join(hypo.words) if hypo.words is not None else post_process(units, post)


@dataclasses.dataclass
class ReportContext:
    """What scoring and writing an utterance's hypotheses needs."""

    tgt_dict: Any
    cfg: Any
    counter: ErrorCounter
    writer: Optional[ResultWriter]
    frame_seconds: float
    dataset: Any
    echo: Tuple[str, str, str] = LEGACY_ECHO


def report(utt_id: int, hypos, target: torch.Tensor, context: ReportContext) -> None:
    """Score the first hypothesis against the target and write/log it as fairseq's infer.py does."""
    tgt_dict, cfg, counter, writer = context.tgt_dict, context.cfg, context.counter, context.writer
    frame_seconds, dataset = context.frame_seconds, context.dataset
    best = hypos[0]
    hyp_units, hyp_words = hypothesis_text(best, tgt_dict, cfg.common_eval.post_process)
    ref_units = tgt_dict.string(target.int())
    ref_words = post_process(ref_units, cfg.common_eval.post_process)
    counter.add(ref_words, hyp_words, ref_units.split(), hyp_units.split())
    if not cfg.common_eval.quiet:
        hypo_line, ref_line, separator = context.echo
        logger.info(hypo_line, hyp_words)
        logger.info(ref_line, ref_words)
        logger.info(separator)
    if writer is None:
        return
    shown = [(tgt_dict[t], step) for t, step in zip(best.tokens.tolist(), best.timesteps)
             if t not in (tgt_dict.bos(), tgt_dict.eos())]  # the units Dictionary.string shows
    spans = word_spans([u for u, _ in shown], [s for _, s in shown], cfg.common_eval.post_process, frame_seconds)
    if best.words is not None and len(best.words) == len(spans):
        for span, word in zip(spans, best.words):
            span.word = word
    record = {
        "id": utt_id,
        "audio": _audio_path(dataset, utt_id),
        "hypo": hyp_words,
        "ref": ref_words,
        "hypo_units": hyp_units,
        "score": float(best.score),
        "word_errors": edit_distance(ref_words.split(), hyp_words.split()),
        "ref_words": len(ref_words.split()),
        "words": [{"word": s.word, "start": round(s.start, 3), "end": round(s.end, 3)} for s in spans],
        "nbest": [{"hypo": hypothesis_text(h, tgt_dict, cfg.common_eval.post_process)[1], "score": float(h.score)}
                  for h in hypos],
    }
    texts = {"hypo.units": hyp_units, "hypo.words": hyp_words, "ref.units": ref_units, "ref.words": ref_words}
    writer.write(f"None-{utt_id}", texts, spans, record)


def _audio_path(dataset: Any, index: int) -> Optional[str]:
    audio = getattr(dataset, "dataset", dataset)
    manifest = getattr(audio, "manifest", None)
    return manifest.full_path(index) if manifest is not None else None


def cli_main() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli_main()
