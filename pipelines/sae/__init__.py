"""sae stage (`stage.py`): train every dictionary size from one shuffled stream, then measure
each. `autoencoder.py` holds the SAE and its sparse backward, `metrics.py` the held-out
figures, `calibration.py` the target-L0 search, `planted.py` activations with a known
dictionary for checking recipes."""
