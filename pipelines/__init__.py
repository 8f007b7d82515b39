"""Offline pipelines: corpus -> tokenizer -> tokens -> model -> activations -> sae -> stats.

Each stage is a module with `run(cfg, run_dir, out)` that reads earlier stages' outputs from
the run folder and writes its own through `pipelines.run_folder`; `pipelines.runner` holds
the stage graph and the skip/resume rules, `python -m pipelines --help` the command line.
The stats stage writes the feature store through `feature_store.writer` (its parts:
`sampling`, `ablation`, `splitting`, `directions`; see `pipelines/stats.py`).
"""
