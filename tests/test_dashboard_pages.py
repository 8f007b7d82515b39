"""Every dashboard page runs headless (AppTest) against a small synthetic store, with and
without query parameters, and bad input gets a clear page instead of a traceback."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import compare_views, feature_views, light_plotly, overview_views
from feature_store import FeatureStore
from feature_store.records import N_INTERVALS, Neighbour
from feature_store.synthetic import build_synthetic_store
from tests.helpers import stores
from tests.helpers.app import APP, chart_figures, open_page

HOSTILE = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>")
SIZES = stores.PAGES.n_features


@pytest.fixture
def app(pages_store, monkeypatch):
    """A function: page, query params -> the AppTest after running that page."""
    monkeypatch.setenv("FEATURE_STORE", str(pages_store))

    return open_page


def texts(at: AppTest) -> str:
    """Everything the page shows as text: markdown, captions, metrics, HTML bodies."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [f"{m.label} {m.value}" for m in at.metric] + [t.value for t in at.title]
    parts += [h.proto.body for h in at.get("html")]
    return "\n".join(str(p) for p in parts)


def test_overview(app):
    at = app("app_pages/overview.py")
    assert not at.error
    names = ["neurons"] + [f"sae_{n}" for n in SIZES]
    (table,) = [h.proto.body for h in at.get("html") if 'class="run-table"' in h.proto.body]
    rows = table.split("<tbody>")[1].split("</tr>")[:-1]
    assert [row.split("<td>")[1].split("</td>")[0] for row in rows] == names
    assert "CE recovered" in table and "tokens checked" in table
    browse = [(link.proto.label, link.proto.query_string) for link in at.get("page_link")]
    assert browse == [(f"browse {n}", f"dictionary={n}") for n in names]
    figures = chart_figures(at)
    assert len(figures) == 2
    assert len(figures[0]["data"]) == 1 + len(SIZES)  # one density curve per dictionary
    assert "validation loss" in texts(at) and "nats below unigram" in texts(at)


def test_overview_says_how_long_the_model_trained_and_warns_when_it_overfits(app, monkeypatch):
    from dashboard import store_access

    assert not app("app_pages/overview.py").warning  # the synthetic run does not overfit
    real = store_access.run_info
    note = "validation loss rose from 4.000 at 2.0M tokens to 4.300: the model overfits its training tokens"
    monkeypatch.setattr(store_access, "run_info", lambda path: {
        **real(path), "tokens_trained": 200_000_000, "train_passes": 67.0, "overfit": note})
    at = app("app_pages/overview.py")
    assert [w.value for w in at.warning] == [
        f"The model overfits its corpus: {note}. Its features may describe memorised training text "
        "more than the language."]
    assert "200,000,000" in texts(at) and "67.0 passes over the training split" in texts(at)


def test_overview_table_formats_escapes_and_skips_missing_columns():
    table = pd.DataFrame({"dictionary": ["<b>x</b>"], "n_features": [16384], "fvu": [float("nan")],
                          "ce_loss_recovered": [0.9751], "recipe": ["topk"]})
    shown = overview_views.metrics_table_html(table)
    assert "&lt;b&gt;x&lt;/b&gt;" in shown and "<b>" not in shown
    assert ">16,384<" in shown and ">97.5%<" in shown and ">–<" in shown  # NaN FVU
    assert "L0" not in shown and "KL" not in shown  # columns this store lacks
    counts = overview_views.metrics_table_html(table.assign(n_ultralow=[3], n_dense=[1]))
    assert 'title="features with density below 1e-5"' in counts  # from schema's thresholds
    assert 'title="features with density above 0.1"' in counts


def test_overview_table_shows_schema_metric_columns_in_schema_order():
    from feature_store import schema

    shown = [c[0] for c in overview_views.METRIC_TABLE_COLUMNS]
    assert set(overview_views.METRIC_DISPLAY) <= set(schema.METRIC_COLUMNS)
    assert shown == [c for c in schema.METRIC_COLUMNS if c != "mse"]


@pytest.mark.parametrize("params", [{}, {"dictionary": "neurons"}, {"dictionary": "sae_128"}])
def test_browser(app, pages_store, params):
    at = app("app_pages/browser.py", **params)
    assert not at.error
    table = at.dataframe[0].value
    dictionary = params.get("dictionary", "sae_64")  # no parameter: the smallest SAE
    features = FeatureStore.open(pages_store).features(dictionary)
    alive = features[features["density_class"] != "dead"]  # the default filter drops dead ones
    assert len(alive) > 0 and list(table["feature"]) == list(alive["index"])
    assert {"open", "feature", "density", "max act", "top tokens", "top logits"} <= set(table)
    assert all(url.startswith("feature?dictionary=") for url in table["open"])
    assert at.dataframe[0].proto.placeholder == "–"  # an unscored unit's score is not "None"


def test_browser_search_finds_hostile_token_as_text(app):
    at = app("app_pages/browser.py", dictionary="sae_64", q="<script>")
    table = at.dataframe[0].value
    assert 0 in set(table["feature"])
    assert all("<script>" in token for token in table["matched"])  # the token, as text


@pytest.mark.parametrize("params", [{}, {"dictionary": "sae_128", "feature": "0"},
                                    {"dictionary": "neurons", "feature": "3"},
                                    {"dictionary": "sae_256", "feature": "255"}])
def test_feature_page(app, params):
    at = app("app_pages/feature.py", **params)
    assert not at.error
    shown = texts(at)
    assert sum(f"Interval {k}</b>" in shown for k in range(1, N_INTERVALS + 1)) == N_INTERVALS
    assert shown.count("of activations (") == N_INTERVALS
    assert "Top activations" in shown and "Raises" in shown and "Lowers" in shown
    assert len(chart_figures(at)) == 2  # activation histogram, logit histogram
    if params:
        assert at.query_params["dictionary"] == params["dictionary"]
        assert f"feature {params['feature']}" in shown
        score = [link for link in at.get("page_link") if link.proto.label == "Score it"]
        assert len(score) == 1 and score[0].proto.page.endswith("score")
        assert score[0].proto.query_string == (f"dictionary={params['dictionary']}"
                                               f"&feature={params['feature']}")


CAVEATS = {"dead": "Dead: never fired", "ultralow": "Ultralow density",
           "dense": "Dense: fires on more than 1 in 10 tokens"}


@pytest.mark.parametrize("density_class", ["dead", "ultralow", "dense", "normal"])
def test_feature_page_says_what_its_density_class_means(app, pages_store, density_class):
    table = FeatureStore.open(pages_store).features("sae_64")
    index = int(table[table.density_class == density_class]["index"].iloc[0])
    shown = texts(app("app_pages/feature.py", dictionary="sae_64", feature=str(index)))
    said = [caveat for caveat in CAVEATS.values() if caveat in shown]
    assert said == ([CAVEATS[density_class]] if density_class in CAVEATS else [])
    assert "dead: never fires; ultralow: &lt; 1e-5; normal; dense: &gt; 0.1" in shown


def test_feature_page_escapes_hostile_tokens(app):
    at = app("app_pages/feature.py", dictionary="sae_64", feature="0")
    charts = [h.proto.body for h in at.get("html") if light_plotly.figures_in(h.proto.body)]
    preload = [h.proto.body for h in at.get("html")
               if h.proto.body.startswith(f"<script {light_plotly.PRELOAD_MARK}>")]
    shortcuts = [h.proto.body for h in at.get("html")
                 if h.proto.body.startswith(f"<script {feature_views.SHORTCUTS_MARK}>")]
    assert len(shortcuts) == 1 and shortcuts[0].count("<script") == 1
    bodies = "".join(h.proto.body for h in at.get("html")
                     if h.proto.body not in charts + preload + shortcuts)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bodies
    assert "&lt;img src=x onerror=alert(1)&gt;" in bodies
    assert "<script" not in bodies and "<img" not in bodies
    # the only scripts on the page: the bundle preload, the ← / → keys (a constant) and the
    # two charts' own (data + drawing)
    assert len(preload) == 1 and preload[0].count("<script") == 1
    assert len(charts) == 2 and all(c.count("<script") == 2 and "<img" not in c for c in charts)


def test_feature_page_ablation_shading(app):
    def switch(at):
        (link,) = [l for l in at.get("page_link") if l.proto.label.startswith("Shade by abl")]
        return link.proto.label[-3:].strip(), link.proto.icon, link.proto.query_string

    at = app("app_pages/feature.py", dictionary="sae_64", feature="1", shade="ablation")
    assert "raised log p(next token)" in texts(at)  # the ablation legend
    assert switch(at) == ("on", ":material/toggle_on:", "dictionary=sae_64&feature=1")  # to off
    at = app("app_pages/feature.py", dictionary="sae_64", feature="1")
    assert "raised log p(next token)" not in texts(at)
    assert switch(at) == ("off", ":material/toggle_off:",
                          "dictionary=sae_64&feature=1&shade=ablation")


def test_activation_histogram_coloured_by_interval(app):
    at = app("app_pages/feature.py", dictionary="sae_64", feature="2")
    bars = chart_figures(at)[0]["data"][0]
    assert len(set(bars["marker"]["color"])) > 1


@pytest.mark.parametrize("params", [{}, {"dictionary": "sae_64", "feature": "5"},
                                    {"dictionary": "neurons", "feature": "0"}])
def test_compare(app, params):
    at = app("app_pages/compare.py", **params)
    assert not at.error
    shown = texts(at)
    assert "decoder cosine" in shown
    assert shown.count("density ") >= 3  # the feature and at least two counterparts
    checked = []
    for caption in (c.value for c in at.caption if c.value.startswith("decoder cosine")):
        cosine = float(caption.split()[2])
        assert ("weak match" in caption) == (cosine < 0.4), caption
        checked.append(cosine)
    assert checked
    # example lines may wrap between tokens (narrow columns), and each column wears its
    # dictionary's colour
    examples = [h.proto.body for h in at.get("html") if 'class="ex"' in h.proto.body]
    assert examples and all('class="tokens wrap"' in b and "<wbr>" in b for b in examples)
    bars = [h.proto.body for h in at.get("html") if "dictionary-bar" in h.proto.body]
    assert len(bars) == len(examples)
    from dashboard import charts
    colours = charts.dictionary_colours(["neurons"] + [f"sae_{n}" for n in SIZES])
    first = params.get("dictionary", "sae_64")
    assert f"background:{colours[first]}" in bars[0]


@pytest.mark.parametrize("cosine, weak", [(0.2, True), (0.394, True), (0.396, False),
                                          (0.4, False), (0.9, False)])
def test_counterpart_caption_labels_weak_matches(cosine, weak):
    rest = tuple(Neighbour("sae_2", i, 0.1) for i in (7, 8, 9, 10))
    caption = compare_views.counterpart_caption("sae_2", Neighbour("sae_2", 3, cosine), rest)
    assert caption.startswith(f"decoder cosine {cosine:.2f}")
    assert ("weak match: sae_2 may have no counterpart" in caption) == weak
    assert caption.endswith("next: #7 (0.10), #8 (0.10), #9 (0.10)")  # three runners-up


@pytest.mark.parametrize("params", [{}, {"dictionary": "sae_64", "feature": "0"}])
def test_splitting(app, pages_store, params):
    at = app("app_pages/splitting.py", **params)
    assert not at.error
    figures = chart_figures(at)
    titles = [f["layout"]["title"]["text"] for f in figures]
    assert any(t.startswith("Joint UMAP") for t in titles)
    umap = next(f for f in figures if f["layout"]["title"]["text"].startswith("Joint UMAP"))
    by_name = {t["name"]: t for t in umap["data"]}
    assert list(by_name)[:4] == ["neurons", "sae_64", "sae_128", "sae_256"]
    assert len({t["marker"]["symbol"] for t in umap["data"][:4]}) == 4  # told apart by shape too
    for trace in umap["data"]:  # hover: unit and top tokens, escaped
        assert "top tokens" in trace["hovertemplate"]
        assert all(len(c) == 3 and "<" not in c[2] for c in trace["customdata"])
    assert any(c[2] for c in by_name["sae_64"]["customdata"])
    if not params:  # the default opens on the strongest split, which has a family
        assert any(t.startswith("Family") for t in titles)
        graph = next(f for f in figures if f["layout"]["title"]["text"].startswith("Family"))
        nodes = graph["data"][-1]
        assert "top tokens" in nodes["hovertemplate"]
        assert all(len(c) == 3 for c in nodes["customdata"])  # dictionary, index, top tokens
        assert not any("<" in c[2] for c in nodes["customdata"])  # escaped for plotly's hover
        bodies = [h.proto.body for h in at.get("html")]
        members = [b for b in bodies if 'class="tokens"' in b and "edge-table" not in b]
        assert len(members) == len(nodes["customdata"])  # each listed member shows its tokens
        assert not any("<script" in b or "<img" in b for b in bodies)
        # every edge's numbers are on the page without hovering: a table row and a label
        dictionary, index = at.title[0].value.split(" · ")[1].split(" #")
        family = FeatureStore.open(pages_store).family(dictionary, int(index))
        (table,) = [b for b in bodies if "edge-table" in b]
        assert table.count("<tr>") == 1 + len(family.edges)
        for edge in family.edges:
            assert f"{edge.masked_cosine:.2f} / {edge.decoder_cosine:.2f}" in graph["data"][-2]["text"]
            assert f'<td class="n">{edge.decoder_cosine:.2f}</td>' in table


def test_splitting_a_neuron_says_neurons_have_no_family(app):
    at = app("app_pages/splitting.py", dictionary="neurons", feature="3")
    assert any("Neurons are not in families" in i.value for i in at.info)
    assert any(f["layout"]["title"]["text"].startswith("Joint UMAP") for f in chart_figures(at))
    for page in ("app_pages/feature.py", "app_pages/compare.py"):  # the links say so first
        labels = {link.proto.label for link in app(page, dictionary="neurons",
                                                   feature="3").get("page_link")}
        assert "Splitting (neurons are not in families)" in labels, page
    labels = {link.proto.label for link in app("app_pages/feature.py", dictionary="sae_64",
                                               feature="3").get("page_link")}
    assert "Splitting" in labels


def test_edge_table_writes_out_every_edge_in_the_graphs_order():
    from dashboard import charts, splitting_views
    from feature_store.records import Family, SplitEdge

    edges = (SplitEdge("s1", 5, "s2", 30, 0.91, 0.8, 1.0),
             SplitEdge("s1", 2, "s2", 10, 0.7, 0.25, 0.95),
             SplitEdge("s2", 30, "s3", 1, 0.8, 0.7, 0.873),
             SplitEdge("s2", 10, "s3", 7, 0.6, 0.5, float("nan")))
    members = tuple(sorted({(e.dictionary_a, e.index_a) for e in edges}
                           | {(e.dictionary_b, e.index_b) for e in edges}))
    family = Family(0, members, edges)
    by_dictionary = charts.family_layer_order(family, ["s1", "s2", "s3"])
    top = {("s1", 2): HOSTILE[0] + " def", ("s3", 1): "return"}
    table = splitting_views.edge_table_html(family, by_dictionary, top,
                                            charts.dictionary_colours(["s1", "s2", "s3"]))
    headers = [label for label, _ in splitting_views.EDGE_COLUMNS]
    assert headers[4:] == ["activation cosine", "decoder cosine", "containment"]
    assert all(f">{html.escape(label)}</th>" in table for label in headers)
    rows = table.split("<tbody>")[1].split("</tr>")[:-1]
    firsts = [row.split("</a>")[0].rsplit(">", 1)[1] for row in rows]
    assert firsts == ["s1 #2", "s1 #5", "s2 #10", "s2 #30"]  # the graph's order, top down
    numbers = [[cell.split("</td>")[0] for cell in row.split('<td class="n">')[1:]]
               for row in rows]
    assert numbers == [["0.70", "0.25", "95%"], ["0.91", "0.80", "100%"],
                       ["0.60", "0.50", "–"], ["0.80", "0.70", "87%"]]
    assert 'href="feature?dictionary=s3&amp;feature=1"' in table
    assert "&lt;script&gt;" in table and "<script" not in table


def test_a_click_on_a_point_with_hover_fields_opens_its_feature():
    """Points carry [dictionary, index, hover text]: the click handler must read the first two."""
    from types import SimpleNamespace

    from dashboard import charts

    def event(*points):
        return SimpleNamespace(selection=SimpleNamespace(points=list(points)))

    assert charts.picked_feature(event({"customdata": ["sae_64", 7, "·return def"]})) == ("sae_64", 7)
    assert charts.picked_feature(event({"customdata": ["sae_64", "12"]})) == ("sae_64", 12)
    assert charts.picked_feature(event({"x": 1}, {"customdata": "an edge"})) is None
    assert charts.picked_feature(event()) is None and charts.picked_feature(None) is None


def test_dictionary_colours_follow_the_store_order_not_the_shown_subset():
    from dashboard import charts

    order = ["neurons", "sae_64", "sae_128", "sae_256"]
    everywhere = charts.dictionary_colours(order)
    assert len(set(everywhere.values())) == len(order)
    assert charts.dictionary_colours(order, extra=["sae_128"]) == everywhere
    assert charts.dictionary_colours(order, extra=["other"])["other"] not in everywhere.values()


@pytest.mark.parametrize("page", ["app_pages/feature.py", "app_pages/compare.py", "app_pages/splitting.py"])
@pytest.mark.parametrize("params, message", [
    ({"dictionary": "sae_999", "feature": "1"}, "Unknown dictionary 'sae_999'"),
    ({"dictionary": "sae_64", "feature": "64"}, "No feature 64 in sae_64"),
    ({"dictionary": "sae_64", "feature": "-1"}, "No feature -1 in sae_64"),
    ({"dictionary": "sae_64", "feature": "abc"}, "'abc' is not a number"),
])
def test_bad_url_gives_a_clear_error(app, page, params, message):
    at = app(page, **params)
    assert at.error and message in at.error[0].value


@pytest.mark.parametrize("page", ["app_pages/overview.py", "app_pages/browser.py", "app_pages/feature.py",
                                  "app_pages/compare.py", "app_pages/splitting.py"])
def test_missing_store_says_how_to_build_one(tmp_path, monkeypatch, page):
    monkeypatch.setenv("FEATURE_STORE", str(tmp_path / "nowhere"))
    at = open_page(page)  # no exception either
    assert at.error and "No usable feature store" in at.error[0].value
    assert "make demo" in at.code[0].value


def test_no_page_imports_torch(pages_store):
    """Pages load in a fresh interpreter without torch (or pipelines/) being imported."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        "for page in ['overview', 'browser', 'feature', 'compare', 'splitting']:\n"
        f"    at = AppTest.from_file({APP!r}, default_timeout=60); at.run()\n"
        "    at.switch_page(f'app_pages/{page}.py').run()\n"
        "    assert not at.exception, page\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pipelines')))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "FEATURE_STORE": str(pages_store)}, timeout=120,
                         cwd=Path(APP).parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_family_graph_children_sit_under_their_parents():
    """A family is a tree of best parents: ordered by parent rank, no two edges cross, and the
    listed order is the drawn top-to-bottom order."""
    from dashboard import charts
    from feature_store.records import Family, SplitEdge

    edges = (SplitEdge("s1", 5, "s2", 30, 0.9, 0.8, 1.0), SplitEdge("s1", 2, "s2", 10, 0.7, 0.6, 1.0),
             SplitEdge("s1", 2, "s2", 40, 0.6, 0.5, 1.0), SplitEdge("s1", 5, "s2", 3, 0.5, 0.4, 1.0),
             SplitEdge("s2", 30, "s3", 1, 0.8, 0.7, 1.0), SplitEdge("s2", 3, "s3", 9, 0.8, 0.7, 1.0),
             SplitEdge("s2", 10, "s3", 7, 0.8, 0.7, 1.0))
    members = tuple(sorted({(e.dictionary_a, e.index_a) for e in edges}
                           | {(e.dictionary_b, e.index_b) for e in edges}))
    family = Family(0, members, edges)
    order = charts.family_layer_order(family, ["s1", "s2", "s3"])
    assert order == {"s1": [2, 5], "s2": [10, 40, 3, 30], "s3": [7, 9, 1]}
    fig = charts.family_graph_figure(family, ["s1", "s2", "s3"], ("s2", 10))
    nodes = fig.data[-1]
    y = {(d, int(i)): yy for (d, i, _), yy in zip(nodes.customdata, nodes.y)}
    assert y[("s2", 10)] > y[("s2", 40)] > y[("s2", 3)] > y[("s2", 30)]  # listed order, top down
    segments = [(e.dictionary_a, y[(e.dictionary_a, e.index_a)], y[(e.dictionary_b, e.index_b)])
                for e in edges]
    for (d1, a1, b1) in segments:  # two edges between the same pair of columns never cross
        for (d2, a2, b2) in segments:
            assert d1 != d2 or (a1 - a2) * (b1 - b2) >= 0, "crossing edges"


def test_a_rebuilt_store_replaces_what_the_server_cached(tmp_path, monkeypatch):
    """The pipeline reran while the server was up: the next page view shows the new build
    (every cache emptied), not the old one until a restart."""
    path = tmp_path / "store"
    build_synthetic_store(path, n_features=(32,), d_mlp=16, n_tokens=5_000)
    monkeypatch.setenv("FEATURE_STORE", str(path))
    before = open_page("app_pages/feature.py", dictionary="sae_32", feature="3")
    assert "of 32</span>" in texts(before)
    build_synthetic_store(path, n_features=(48,), d_mlp=16, n_tokens=5_000)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()  # the first view after the rebuild says so, once
    assert [t.value for t in at.toast] == ["The feature store was rebuilt; showing the new build."]
    at.query_params["dictionary"], at.query_params["feature"] = "sae_48", "3"
    at.switch_page("app_pages/feature.py").run()
    assert not at.exception and not at.toast
    assert "of 48</span>" in texts(at)


def test_a_store_that_appears_is_shown_without_a_rebuilt_notice(tmp_path, monkeypatch):
    path = tmp_path / "store"
    monkeypatch.setenv("FEATURE_STORE", str(path))
    missing = AppTest.from_file(APP, default_timeout=60)
    missing.run()
    assert "No usable feature store" in missing.error[0].value
    build_synthetic_store(path, n_features=(32,), d_mlp=16, n_tokens=5_000)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and not at.toast and "validation loss" in texts(at)


def test_splitting_opens_on_the_parent_with_most_children(monkeypatch):
    """A lone strong edge is usually a feature persisting across sizes; a parent with several
    children is a split, which is what the page is for."""
    import pandas as pd

    from dashboard import splitting_views, store_access

    edges = pd.DataFrame({"dictionary_a": ["s1", "s1", "s1", "s2"], "index_a": [4, 7, 7, 3],
                          "dictionary_b": ["s2", "s2", "s2", "s3"], "index_b": [1, 2, 9, 5],
                          "masked_cosine": [0.99, 0.6, 0.7, 0.9],
                          "decoder_cosine": [0.98, 0.6, 0.7, 0.9],
                          "containment": [1.0, 0.9, 0.9, 1.0]})
    monkeypatch.setattr(store_access, "splits", lambda path: edges)
    assert splitting_views.default_feature("any") == ("s1", 7)
