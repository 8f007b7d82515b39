"""A study: several variants of a run on the same tokens. `config.py` reads the study file,
`runner.py` builds the variants and then the universality stage."""
