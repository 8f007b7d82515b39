"""activations stage: the cache of `blocks.0.mlp.hook_post`. `stage.py` writes it; `shards.py`
is the one reader every later stage uses."""
