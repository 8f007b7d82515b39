"""interp stage (`stage.py`): explain every unit from training-split windows and score it on
held-out ones. `sets.py` builds the two window sets, `explainer.py` the offline explainer,
`llm.py` the optional LLM client (prompts in `prompts.py`), `scoring.py` the scorers."""
