"""The feature browser: one dictionary's features as a sortable, filterable table.

Filters live in the URL (`?dictionary=&q=&in=tokens|logits&exact=1&class=`) so a filtered
view can be shared. Each row links to its feature page (the `open` column), and selecting a
row goes there too. The table is rendered by Streamlit's data grid, which draws text on a
canvas: token text in cells is never HTML.

Search: the query picks tokens of the vocabulary (a case-insensitive substring of their
display form, or with "exact token" the display form itself); then each unit is matched
either on its top examples' drawn tokens (`in=tokens`: ranked by its activation on the best
matching one) or on its stored top logits (`in=logits`: ranked by that token's logit
weight). So the first rows are the units that respond most strongly to the token, not the
lowest indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import interp_views, links, score_access, store_access, url_state
from feature_store import token_display
from feature_store.records import DENSITY_CLASSES

# What a search looks at: URL value -> (label, the strength column's name and help).
SEARCH_IN = {
    "tokens": ("top tokens", "act on token",
               "The unit's activation on the matching token: the largest among its top "
               "examples whose drawn (outlined) token matches."),
    "logits": ("top logits", "logit weight",
               "The unit's logit weight d·W_out·W_U for the matching token, among the top "
               "logits the store keeps for it."),
}


@dataclass(frozen=True)
class Search:
    """A search as the URL holds it; `query` empty means no search."""

    query: str
    where: str = "tokens"  # a key of SEARCH_IN
    exact: bool = False


def pick_dictionary(path: str) -> str:
    names = store_access.dictionaries(path)
    current = url_state.chosen_dictionary(path)
    chosen = st.segmented_control("Dictionary", names, default=current, key="dictionary_pick")
    chosen = chosen or current
    url_state.keep_in_url(dictionary=chosen)
    return chosen


def filters() -> tuple[Search, list[str]]:
    """Search (text, where, exact) and density classes, read from and written to the URL."""
    text, where, exact, right = st.columns([3, 2, 1, 3], vertical_alignment="bottom")
    query = text.text_input("Search by token", value=st.query_params.get("q", ""),
                            placeholder="e.g. def, ·the, ↵", key="q_input",
                            help="A space in the query matches · (how tokens show a space).")
    labels = {label: key for key, (label, _, _) in SEARCH_IN.items()}
    current = SEARCH_IN.get(st.query_params.get("in", "tokens"), SEARCH_IN["tokens"])[0]
    chosen = where.segmented_control("Search in", list(labels), default=current, key="in_input",
                                     help="top tokens: the drawn tokens of each unit's top "
                                          "examples; top logits: the tokens it raises most")
    exactly = exact.checkbox("exact token", value=st.query_params.get("exact") == "1",
                             key="exact_input",
                             help="Match a whole token exactly (case-sensitive) instead of "
                                  "any token containing the text (any case).")
    default_classes = [c for c in st.query_params.get("class", "").split(",") if c in
                       DENSITY_CLASSES] or ["ultralow", "normal", "dense"]
    classes = right.multiselect("Density class", DENSITY_CLASSES, default=default_classes,
                                key="class_input")
    search = Search(query, labels.get(chosen or current, "tokens"), exactly)
    for key, value in (("q", query), ("in", "logits" if search.where == "logits" else ""),
                       ("exact", "1" if exactly else ""), ("class", ",".join(classes))):
        if value:
            st.query_params[key] = value
        elif key in st.query_params:
            del st.query_params[key]
    return search, classes


def query_forms(query: str) -> list[str]:
    """The query as typed and with spaces shown as `·` (how display forms write a space),
    so ` the` finds `·the`; both, because an old store may hold raw spaces."""
    shown = token_display.visible(query, space=token_display.SPACE)
    return list(dict.fromkeys([query, shown]))


def matching_tokens(vocab: pd.DataFrame, query: str, exact: bool) -> pd.DataFrame:
    """The vocabulary rows (token_id, display) the query picks: display form equal to it
    (`exact`, case-sensitive) or containing it (any case; literal, `.` is not a pattern)."""
    display = vocab["display"].astype(str)
    keep = np.zeros(len(vocab), dtype=bool)
    for form in query_forms(query):
        if exact:
            keep |= (display == form).to_numpy()
        else:
            keep |= display.str.casefold().str.contains(form.casefold(), regex=False).to_numpy()
    return vocab[keep]


def strongest_matches(rows: pd.DataFrame, strength: str, token_ids: np.ndarray) -> pd.DataFrame:
    """Per unit, its strongest row whose token is one of `token_ids`: index, token_id,
    strength, rank (of that row in the unit's list, 1 = its strongest), hits (how many of its
    rows matched), strongest first, then by index.

    `rows` holds feature, token_id and the `strength` column (a top example's activation,
    or a logit weight)."""
    hit = rows[rows["token_id"].isin(token_ids)]
    if hit.empty:
        return pd.DataFrame({"index": np.zeros(0, np.int64), "token_id": np.zeros(0, np.int64),
                             "strength": np.zeros(0), "rank": np.zeros(0, np.int64),
                             "hits": np.zeros(0, np.int64)})
    best = hit.sort_values([strength, "feature"], ascending=[False, True], kind="stable")
    best = best.drop_duplicates("feature").set_index("feature")
    out = pd.DataFrame({"index": best.index.to_numpy(), "token_id": best["token_id"].to_numpy(),
                        "strength": best[strength].to_numpy(dtype=float),
                        "rank": best["rank"].to_numpy(dtype=np.int64) + 1,
                        "hits": hit.groupby("feature").size().reindex(best.index).to_numpy()})
    return out.sort_values(["strength", "index"], ascending=[False, True], kind="stable")


@st.cache_data(show_spinner="Reading each unit's top examples…", max_entries=64)
def search_matches(path: str, dictionary: str, query: str, where: str,
                   exact: bool) -> tuple[pd.DataFrame, list[str]]:
    """(strongest match per unit, the vocabulary tokens the query picked). Cached per search:
    the store reads a dictionary's top-example tokens once, this keeps only the small result."""
    store = store_access.open_store(path)
    picked = matching_tokens(store.vocab(), query, exact)
    if where == "logits":
        rows, strength = store.top_logit_tokens(dictionary), "value"
    else:
        rows, strength = store.top_example_tokens(dictionary), "act"
    found = strongest_matches(rows, strength, picked["token_id"].to_numpy())
    found["token"] = [token_display.visible(t) for t in
                      store.token_display(found["token_id"].to_numpy(dtype=np.int64))]
    return found, picked["display"].astype(str).tolist()


def filtered(table: pd.DataFrame, classes: list[str],
             found: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows whose density class is chosen; with a search, only the units it `found`, in its
    order (strongest first), with its token, strength, rank and hits columns joined on."""
    rows = table[table["density_class"].isin(classes)]
    if found is None:
        return rows
    return found.merge(rows, on="index", how="inner", sort=False)


def search_caption(search: Search, picked: list[str]) -> str:
    """Which vocabulary tokens the query picked and how rows are ranked, so a result (or an
    empty one) explains itself."""
    plural = len(picked) > 1
    how = ("are" if plural else "is") if search.exact else ("contain" if plural else "contains")
    if not picked:
        tried = " or ".join(repr(form) for form in query_forms(search.query))
        return f"No vocabulary token {how} {tried}, so no unit matches."
    forms = list(dict.fromkeys(picked))  # two ids can share a display form
    shown = ", ".join(forms[:8]) + (", …" if len(forms) > 8 else "")
    label, strength, _ = SEARCH_IN[search.where]
    return (f"{len(picked):,} vocabulary token{'s' if plural else ''} {how} {search.query!r} "
            f"({shown}). Units with one among their {label}, highest {strength} first.")


@st.cache_data(show_spinner=False, max_entries=16)
def browse_table(path: str, dictionary: str) -> pd.DataFrame:
    """The store's features table with its token text in display form again (the same rule
    as token HTML): the grid draws text on a canvas, where a raw U+202E from an older store
    would still reverse the cell. Cached, so the ~5 µs per cell is paid once."""
    table = store_access.features(path, dictionary)
    for column in ("top_tokens", "top_logits"):
        table[column] = [token_display.visible(str(t or "")) for t in table[column]]
    return table


def feature_table(path: str, dictionary: str, search: Search, classes: list[str]) -> None:
    table = browse_table(path, dictionary)
    found = None
    if search.query:
        found, picked = search_matches(path, dictionary, search.query, search.where,
                                       search.exact)
    rows = filtered(table, classes, found)
    expl = interp_views.explanations(path, dictionary)  # issue 13: None before interp ran
    if expl is not None:
        rows = interp_views.filter_rows(rows, expl, *interp_views.browser_filters())
    if found is not None:
        st.caption(search_caption(search, picked))
    st.caption(f"{len(rows):,} of {len(table):,} features · click a column header to sort, "
               "select a row (left edge) or click *open* to view a feature")
    view = pd.DataFrame({
        "open": [links.feature_url(dictionary, i) for i in rows["index"]],
        "feature": rows["index"].to_numpy(),
        "log10 density": np.log10(rows["density"].to_numpy(dtype=float).clip(1e-12)),
        "density": rows["density"].to_numpy(),
        "class": rows["density_class"].to_numpy(),
        "max act": rows["max_act"].to_numpy(),
        "mean act": rows["mean_act"].to_numpy(),
        "top tokens": rows["top_tokens"].to_numpy(),
        "top logits": rows["top_logits"].to_numpy(),
    })
    if found is not None:
        view.insert(2, "matched", rows["token"].to_numpy())
        view.insert(3, "strength", rows["strength"].to_numpy())
        # tokens: how many top examples fire on it; logits: where it stands among them
        count = "hits" if search.where == "tokens" else "rank"
        view.insert(4, count, rows[count].to_numpy())
    view = interp_views.browser_columns(view, expl)
    means = score_access.unit_means(path, dictionary)
    if len(means):  # only once something in this dictionary was scored
        view.insert(2, "score", rows["index"].map(means).to_numpy())
    event = st.dataframe(
        view, hide_index=True, height=620, on_select="rerun", selection_mode="single-row",
        key=f"table_{dictionary}", placeholder="–",  # not "None": an unscored unit
        column_config={**column_config(search), **interp_views.BROWSER_COLUMN_CONFIG})
    selected = getattr(getattr(event, "selection", None), "rows", None)
    if selected:
        links.open_feature(dictionary, int(view["feature"].iloc[selected[0]]))


def column_config(search: Search) -> dict:
    """Formats, widths and hover help of the table's columns (search columns by `search`)."""
    label, strength, strength_help = SEARCH_IN[search.where]
    return {
        "open": st.column_config.LinkColumn("", display_text="open", width=50),
        "feature": st.column_config.NumberColumn("feature", format="%d", width=70),
        "matched": st.column_config.TextColumn(
            "matched", width=90, help=f"The matching token among its {label}"),
        "strength": st.column_config.NumberColumn(strength, format="%.3f", width=90,
                                                  help=strength_help),
        "hits": st.column_config.NumberColumn(
            "hits", format="%d", width=50,
            help="How many of its top examples have a matching drawn token"),
        "rank": st.column_config.NumberColumn(
            "rank", format="%d", width=50,
            help="Where the matching token stands among its top logits (1 = its largest)"),
        "log10 density": st.column_config.ProgressColumn(
            "log10 density", min_value=-7.0, max_value=0.0, format="%.2f", width=110),
        "density": st.column_config.NumberColumn("density", format="%.2e", width=80),
        "class": st.column_config.TextColumn("class", width=70),
        "max act": st.column_config.NumberColumn("max act", format="%.2f", width=70),
        "mean act": st.column_config.NumberColumn("mean act", format="%.2f", width=70),
        "top tokens": st.column_config.TextColumn("top tokens", width="large"),
        "top logits": st.column_config.TextColumn("top logits", width="large"),
        "score": st.column_config.NumberColumn(
            "score", format="%.1f", width=60,
            help="Rubric total: mean over raters of each rater's latest score"),
    }
