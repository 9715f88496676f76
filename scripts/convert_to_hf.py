#!/usr/bin/env python3
"""Convert a fairseq / fairseq_lite wav2vec 2.0, HuBERT or w2v-BERT checkpoint into a Hugging Face Transformers folder.

    python scripts/convert_to_hf.py checkpoint_best.pt hf_model/ [--dict data/dict.ltr.txt]

A pretraining checkpoint (``wav2vec2``) becomes ``Wav2Vec2ForPreTraining`` (``Wav2Vec2ConformerForPreTraining``
for conformer models), or the bare ``Wav2Vec2Model`` when it was pretrained on continuous targets
(``model.quantize_targets=false``, as the demo's: HF's pretraining head always quantizes); ``hubert`` becomes
``HubertModel`` and ``w2v_bert`` (w2v-BERT 2.0) ``Wav2Vec2BertModel`` (HF has no pretraining head for either). A
fine-tuned one (``wav2vec_ctc`` / ``hubert_ctc`` / ``w2v_bert_ctc``) becomes ``Wav2Vec2ForCTC`` / ``HubertForCTC`` /
``Wav2Vec2BertForCTC`` with vocab.json, the tokenizer and the feature extractor, so
``pipeline("automatic-speech-recognition", model="hf_model/")`` transcribes offline. Weights are written as
safetensors. An MMS model with language adapters (``layer_type=trf_adp``, pre-LN, adapters on every layer) becomes
``Wav2Vec2ForCTC(adapter_attn_dim=adp_dim)`` plus one ``adapter.<lang>.safetensors`` per language, which
``model.load_adapter(lang)`` reads; the languages are the checkpoint's ``task.multi_corpus_keys`` or
``--langs eng,fra,...`` (adapter order). Needs ``pip install fairseq_lite[hf]``.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from fairseq_lite.cli.common import run_cli, setup_logging


def main(argv: List[str]) -> Optional[int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="fairseq-layout .pt file (wav2vec2, wav2vec_ctc, hubert, hubert_ctc, "
                        "w2v_bert or w2v_bert_ctc)")
    parser.add_argument("out_dir", help="folder to write the Hugging Face model into")
    parser.add_argument("--dict", dest="dictionary", default=None,
                        help="dict.ltr.txt, for CTC checkpoints that do not store their dictionary")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle arbitrary objects in the checkpoint (only for files you trust)")
    parser.add_argument("--langs", default=None, help="comma-separated language of each adapter, in adapter order "
                        "(default: the checkpoint's task.multi_corpus_keys)")
    args = parser.parse_args(argv)
    setup_logging()
    from fairseq_lite.interop.hf_files import export_checkpoint_to_hf

    langs = args.langs.split(",") if args.langs else None
    name = export_checkpoint_to_hf(args.checkpoint, args.out_dir, args.dictionary, args.trust_checkpoint, langs)
    print(f"wrote {name} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    run_cli(main)
