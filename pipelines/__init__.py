"""Offline pipelines: corpus -> tokenizer -> tokens -> model (and later activations, SAEs, stats).

Each stage writes into one run folder through `pipelines.run_folder`; see `pipelines.runner`
for the stage graph and `python -m pipelines --help` for the command line.
"""
