"""The data stages, one module each: corpus (collect text), tokenizer (train a byte-level BPE) and
tokens (fixed-length sequences split by document). They are small and share one concern, the
text the model will see, so they share a package; every later stage has a package of its own
whose entry module is `stage.py`."""
