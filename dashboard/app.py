"""Entry point: `streamlit run dashboard/app.py` (see the Procfile).

The store path comes from `FEATURE_STORE` (default `runs/tiny/store`, what `make demo`
builds). Pages are thin scripts under `app_pages/` (why not `pages/`: see links.py); each is reachable by URL, e.g.
`/feature?dictionary=sae_1024&feature=7`. No page imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the repository root;
# the root is needed to import `dashboard.*` and `feature_store`.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dashboard import links, token_html  # noqa: E402


def main() -> None:
    st.set_page_config(page_title="Feature explorer", layout="wide")
    st.html(f"<style>{token_html.TOKEN_CSS}</style>")
    pages = [
        st.Page(links.OVERVIEW, title="Overview", url_path=links.URL_PATHS[links.OVERVIEW],
                default=True),
        st.Page(links.BROWSER, title="Feature browser", url_path=links.URL_PATHS[links.BROWSER]),
        st.Page(links.FEATURE, title="Feature", url_path=links.URL_PATHS[links.FEATURE]),
        st.Page(links.COMPARE, title="Compare sizes", url_path=links.URL_PATHS[links.COMPARE]),
        st.Page(links.SPLITTING, title="Splitting", url_path=links.URL_PATHS[links.SPLITTING]),
        st.Page(links.PROMPT, title="Prompt explorer", url_path=links.URL_PATHS[links.PROMPT]),
        st.Page(links.SCORE, title="Score", url_path=links.URL_PATHS[links.SCORE]),
        st.Page(links.RESULTS, title="Results", url_path=links.URL_PATHS[links.RESULTS]),
    ]
    st.navigation(pages, position="top").run()


main()
