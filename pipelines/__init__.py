"""Offline pipelines: corpus -> tokenizer -> tokens -> model -> activations -> sae -> stats -> interp.

The tree is the data flow: `data/` (corpus, tokenizer, tokens), then one package per later
stage, each with its entry in `stage.py`: `model/`, `activations/`, `sae/`, `stats/`,
`interp/`; a study adds `universality/` over several runs (`study/`). A stage exposes
`run(cfg, run_dir, out)`, reads earlier stages' outputs from the run folder and writes only
into `out`. The small core beside the packages: `runner` (the stage graph and the
skip/resume rules), `run_folder` (manifest, staging, locks), `config` (one frozen config per
stage), `cli` (`python -m pipelines --help`), `devices`, `graph_capture` (a training step
recorded as a CUDA graph), `distributed`, `progress`, `errors`.
The stats stage writes the feature store through `feature_store.writer`.
"""
