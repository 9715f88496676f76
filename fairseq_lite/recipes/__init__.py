"""fairseq2-style recipe commands (``python -m ssl|asr[.eval] --config-file C.yaml OUTPUT_DIR``) over our trainer.

A recipe config (fairseq2's sections: model, dataset, optimizer, lr_scheduler, trainer, regime, loss ...) is
mapped onto one FairseqConfig (``config_map.recipe_to_fairseq``) and run by ``fairseq_lite.training``; dataset
names are read from asset cards (``asset_cards``).
"""
