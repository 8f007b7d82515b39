"""model stage (`stage.py`): train the one-layer transformer on the token sequences."""
