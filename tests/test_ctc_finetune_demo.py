"""End to end on real speech: a tiny wav2vec 2.0 pretrained with the trainer for a few updates, then fine-tuned
with CTC on four utterances of the committed demo corpus (espeak-ng speech, FLAC) until greedy CER < 5 %.

The fine-tuned checkpoint is then loaded with ``load_model_ensemble_and_task`` after the pretraining file has been
moved away (it rebuilds from ``cfg.model.w2v_args``) and decodes the audio files itself.
"""

import glob
import os

import soundfile as sf
import torch

import fairseq_lite  # noqa: F401
from fairseq_lite import checkpoint_utils
from fairseq_lite.data.labels import write_label_files
from fairseq_lite.data.manifest import write_manifest
from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.decoding import ViterbiDecoder, edit_distance
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.training.train import main as train_main

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "corpus")
TINY = dict(_name="wav2vec2", quantize_targets=True, final_dim=32, encoder_layers=2, encoder_embed_dim=64,
            encoder_ffn_embed_dim=128, encoder_attention_heads=4,
            conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2", conv_pos=32,
            conv_pos_groups=4, latent_vars=32, num_negatives=10, feature_grad_mult=1.0, dropout=0.0,
            attention_dropout=0.0, encoder_layerdrop=0.0)
COMMON = {"cpu": True, "seed": 1, "log_format": "none"}


def shortest_utterances(count):
    """(absolute path, frames, transcript) of the ``count`` shortest training utterances of the demo corpus."""
    transcripts = {}
    for path in glob.glob(os.path.join(CORPUS, "train", "*", "*", "*.trans.txt")):
        with open(path) as f:
            for line in f:
                utt, text = line.split(" ", 1)
                transcripts[utt] = text.strip()
    files = sorted(glob.glob(os.path.join(CORPUS, "train", "*", "*", "*.flac")))
    items = sorted(((f, sf.info(f).frames) for f in files), key=lambda item: (item[1], item[0]))[:count]
    return [(f, n, transcripts[os.path.basename(f)[: -len(".flac")]]) for f, n in items]


def test_pretrain_then_ctc_finetune_reaches_low_cer(tmp_path):
    data = tmp_path / "data"
    utterances = shortest_utterances(4)
    root = os.path.join(CORPUS, "train")
    data.mkdir()
    for split in ("train", "valid"):
        write_manifest(str(data / f"{split}.tsv"), root,
                       [(os.path.relpath(f, root), n) for f, n, _ in utterances])
        write_label_files([t for _, _, t in utterances], str(data), split)
    (data / "dict.ltr.txt").write_text(open(os.path.join(CORPUS, "dict.ltr.txt")).read())

    pretrain = finalize_config({
        "common": COMMON, "task": {"_name": "audio_pretraining", "data": str(data)},
        "dataset": {"max_tokens": 400000, "num_workers": 0, "disable_validation": True},
        "optimization": {"max_update": 5, "lr": [5e-4]}, "optimizer": {"_name": "adam"},
        "lr_scheduler": {"_name": "fixed"},
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10]},
        "checkpoint": {"save_dir": str(tmp_path / "pre"), "no_epoch_checkpoints": True}, "model": TINY,
    })
    train_main(pretrain)
    pretrained = tmp_path / "pre" / "checkpoint_last.pt"
    assert load_checkpoint_to_cpu(str(pretrained))["optimizer_history"][-1]["num_updates"] == 5

    finetune = finalize_config({
        "common": COMMON, "task": {"_name": "audio_finetuning", "data": str(data), "labels": "ltr"},
        "dataset": {"max_tokens": 400000, "num_workers": 0, "valid_subset": "valid"},
        "optimization": {"max_update": 60, "lr": [4e-3], "sentence_avg": True},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-8},
        "lr_scheduler": {"_name": "tri_stage", "phase_ratio": [0.1, 0.4, 0.5], "final_lr_scale": 0.05},
        "criterion": {"_name": "ctc", "zero_infinity": True},
        "checkpoint": {"save_dir": str(tmp_path / "ft"), "no_epoch_checkpoints": True,
                       "best_checkpoint_metric": "uer"},
        "model": {"_name": "wav2vec_ctc", "w2v_path": str(pretrained), "apply_mask": False, "feature_grad_mult": 1.0},
    })
    best_uer = train_main(finetune)
    assert best_uer < 5.0

    best = tmp_path / "ft" / "checkpoint_best.pt"
    state = load_checkpoint_to_cpu(str(best))
    assert state["cfg"]["model"]["w2v_args"]["model"]["encoder_embed_dim"] == 64
    assert state["optimizer_history"][-1]["criterion_name"] == "CtcCriterion"
    assert all(k.startswith("w2v_encoder.") for k in state["model"])
    os.rename(pretrained, tmp_path / "moved.pt")  # the fine-tuned file must not need w2v_path

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(best)])
    model, dictionary = models[0].eval(), task.target_dictionary
    errors = total = 0
    for path, _, text in utterances:
        wav, _ = sf.read(path, dtype="float32")
        with torch.no_grad():
            emissions = model.get_logits(model(source=torch.from_numpy(wav)[None])).transpose(0, 1)
        hypo = ViterbiDecoder(dictionary).decode(emissions)[0][0]
        reference = dictionary.encode_line(" ".join(text.replace(" ", "|")) + " |").tolist()
        errors += edit_distance(reference, hypo.tokens.tolist())
        total += len(reference)
    assert 100.0 * errors / total < 5.0

