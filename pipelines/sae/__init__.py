"""sae stage (`stage.py`): train every dictionary size from one shuffled stream, then measure
each. `autoencoder.py` holds the SAE and its sparse backward, `codes.py` the active codes'
products, `step_graph.py` a TopK step replayed as a CUDA graph, `metrics.py` the held-out
figures, `calibration.py` the target-L0 search, `planted.py` activations with a known
dictionary for checking recipes."""
