"""The Streamlit dashboard: thin pages over `feature_store`, which is the only code that reads
the store. Nothing here imports torch or `pipelines/`; see `app.py` for the entry point."""
