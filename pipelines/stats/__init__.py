"""stats stage (`stage.py`): the feature store. `sampling.py` (passes 1 and 2: streaming summaries
and example sampling), `ablation.py` (pass 3: logit weights and ablation effects),
`splitting.py` (feature splitting across sizes), `directions.py` (neighbours and the joint
UMAP), `dictionaries.py` (every SAE and the neurons as one kind of unit), `parts.py` (the
pass over shards in parts) and `ray_engine.py` (the same passes on Ray workers)."""
