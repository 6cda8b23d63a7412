"""Training: the model, its data, the worker every training stage runs, and the export.

- :mod:`.model`        the base model, its grown vocabulary, LoRA and the trained embedding rows
- :mod:`.data_recipe`  the pretraining data mix (``data_recipes/*.yaml``)
- :mod:`.documents`    a recipe's sources read as documents, tokenized, split for validation
- :mod:`.corpus`       a data recipe -> tokenized, mixed, packed blocks, cached by content
- :mod:`.sft_data`     build_sft's rows -> token ids and labels through the prompt format
- :mod:`.collate`      packed (padding-free) and padded batches
- :mod:`.spec`         the settings and the spec a stage hands its workers
- :mod:`.worker`       one training process (``python -m llamagene.training SPEC.json``)
- :mod:`.trainer`      the HF Trainer as the worker uses it: data, optimizer groups, logs
- :mod:`.checkpoints`  which checkpoint a rerun may resume from
- :mod:`.run`          what the training stages share: work key, workers, export
- :mod:`.export`       the adapter, the merged model, and the checks on them

Nothing heavy is imported here, so ``llamagene --help`` stays instant.
"""
