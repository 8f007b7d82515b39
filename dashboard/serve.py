"""`python -m dashboard.serve [streamlit options]`: the dashboard, warmed before it listens.

The same as `streamlit run dashboard/app.py [options]` (the Makefile and the Procfile use
this), except that what every first page run would otherwise pay happens before the server
accepts a connection: importing the page modules (pandas, plotly, the store's code),
opening the store that `FEATURE_STORE` names and reading each dictionary's first record.
Streamlit runs every session's script in this same process, so the first visitor after a
start waits no longer than the next one (the prompt explorer's model still loads on its
first use: no other page imports torch).

Warming never fails the start: a missing or broken store (or a module that does not
import) is left for the pages to explain, exactly as without warming. It costs the start
what the first page view would have cost: the store's open checks every table's footer
(0.3 s for 4 × 16,384 features, `benchmarks/store_read.py`).
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
ROOT = APP.parent.parent
# What the pages import, torch-free (the prompt explorer's `prompt_views` loads the model).
PAGE_MODULES = ("plotly.io", "dashboard.browser_views", "dashboard.charts",
                "dashboard.compare_views", "dashboard.feature_views", "dashboard.light_plotly",
                "dashboard.results_views", "dashboard.overview_views", "dashboard.score_views",
                "dashboard.splitting_views", "dashboard.universality_views", "dashboard.url_state")


def warm() -> str:
    """Import what the pages import and open the store; returns a one-line summary."""
    started = time.perf_counter()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    importlib.import_module("streamlit")  # creates the logger silenced below, at its level
    # `st.cache_data` checks its storage when a function is decorated and, before the
    # server exists, warns once per function; the storage it checks is never used then.
    quiet = logging.getLogger("streamlit.runtime.caching.cache_data_api")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for module in PAGE_MODULES:
            importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - the pages will show it; the server still starts
        return f"dashboard not warmed ({type(err).__name__}: {err}); starting anyway"
    finally:
        quiet.setLevel(level)
    from dashboard import store_access
    from feature_store.errors import StoreError

    path = store_access.store_path()
    try:
        if store_access.study_root(path):  # a study: warm the run pages open on first
            path = store_access.variant_store(path, store_access.study_variants(path)[0])
        store_access.drop_if_rebuilt(path)  # records the build the warmed caches hold
        store = store_access.open_store(path)
        for name in store.dictionaries():  # each dictionary's first record reads its tables
            if store.n_features(name):
                store.feature(name, 0)
        opened = f"store {path} opened, {len(store.dictionaries())} dictionaries read"
    except (StoreError, OSError) as err:
        opened = f"store {path} not usable yet ({err}); the pages say how to build it"
    except Exception as err:  # noqa: BLE001 - warming is an optimisation, never a failure
        opened = f"store {path} not warmed ({type(err).__name__}: {err})"
    return f"dashboard warmed in {time.perf_counter() - started:.1f} s: {opened}"


def main(argv: list[str] | None = None) -> None:
    print(warm(), flush=True)
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
