"""Entry point: `streamlit run dashboard/app.py`, or warmed: `python -m dashboard.serve`
(what the Makefile and the Procfile run; see serve.py).

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

from dashboard import light_plotly, links, token_html  # noqa: E402


PAGE_TITLES = {links.OVERVIEW: "Overview", links.BROWSER: "Feature browser",
               links.FEATURE: "Feature", links.COMPARE: "Compare sizes",
               links.SPLITTING: "Splitting", links.PROMPT: "Prompt explorer",
               links.UNIVERSALITY: "Universality", links.SCORE: "Score", links.RESULTS: "Results"}
# Pages that draw `light_plotly` charts: the bundle starts loading before their elements render.
CHART_PAGES = (links.OVERVIEW, links.FEATURE, links.SCORE, links.RESULTS, links.UNIVERSALITY)


def main() -> None:
    st.set_page_config(page_title="Feature explorer", layout="wide")
    # The default page is served at `/` but still reserves a pathname, so it takes a name
    # nobody types and `/overview` is a hidden page that redirects to `/` (instead of
    # Streamlit's "Page not found" dialog over the overview).
    pages = {script: st.Page(script, title=title, default=script == links.OVERVIEW,
                             url_path=("home" if script == links.OVERVIEW
                                       else links.URL_PATHS[script]))
             for script, title in PAGE_TITLES.items()}
    alias = st.Page(lambda: st.switch_page(pages[links.OVERVIEW]), title="Overview",
                    url_path=links.URL_PATHS[links.OVERVIEW], visibility="hidden")
    page = st.navigation([*pages.values(), alias], position="top")
    st.html(f"<style>{token_html.TOKEN_CSS}</style>")
    if any(page is pages[script] for script in CHART_PAGES):
        light_plotly.preload()
    page.run()


main()
