#!/usr/bin/env python3
"""Convert a local Hugging Face wav2vec 2.0, HuBERT or w2v-BERT folder into a checkpoint with fairseq's layout.

    python scripts/convert_from_hf.py hf_model/ wav2vec_ctc.pt

``Wav2Vec2ForCTC`` / ``Wav2Vec2ConformerForCTC`` folders become ``wav2vec_ctc`` checkpoints (the pretraining
config under ``cfg.model.w2v_args``, the letter dictionary from vocab.json in ``task_state``), so they load with
``checkpoint_utils.load_model_ensemble_and_task`` and decode with infer.py; ``...ForPreTraining`` folders become
``wav2vec2`` checkpoints to fine-tune from (``model.w2v_path``). ``HubertForCTC`` becomes ``hubert_ctc``; HF has
no HuBERT pretraining head, so ``HubertModel`` becomes a ``hubert`` backbone (no ``final_proj`` /
``label_embs_concat``) to fine-tune from with ``model.w2v_path`` or extract features from. A ``Wav2Vec2ForCTC``
with adapters (``adapter_attn_dim``) becomes an MMS ``trf_adp`` model with one adapter row per
``adapter.<lang>.safetensors`` (all of them, or ``--langs eng,fra``), stored as ``task.multi_corpus_keys``.
``Wav2Vec2BertModel`` (w2v-BERT 2.0; HF dropped its quantizer) becomes a ``w2v_bert`` backbone and
``Wav2Vec2BertForCTC`` a ``w2v_bert_ctc`` checkpoint. Nothing is downloaded: the folder must be local.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from fairseq_lite.cli.common import run_cli, setup_logging


def main(argv: List[str]) -> Optional[int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_dir", help="folder with config.json and the weights (save_pretrained output)")
    parser.add_argument("checkpoint", help="the .pt file to write")
    parser.add_argument("--langs", default=None, help="comma-separated languages whose adapter.<lang>.safetensors "
                        "become adapter rows 0, 1, ... (default: every one in the folder, sorted)")
    args = parser.parse_args(argv)
    setup_logging()
    from fairseq_lite.interop.hf_files import import_checkpoint_from_hf

    name = import_checkpoint_from_hf(args.hf_dir, args.checkpoint, args.langs.split(",") if args.langs else None)
    print(f"wrote a {name} checkpoint to {args.checkpoint}")
    return 0


if __name__ == "__main__":
    run_cli(main)
