"""`feature_store/schema.py`'s docstring is the store's format for people: every column and
manifest key the writers actually write is named there, in its table's section, with the
type written when the docstring gives one. Checked against stores written by the real
writers (StoreWriter via the synthetic store, the explanations writer, the study writer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from feature_store import schema
from feature_store.study_store import write_study_store
from feature_store.synthetic import build_synthetic_store, write_synthetic_explanations

STUDY_PART, EXPLANATIONS_PART = "A study's store", "Explanations (issue 13)"
HEADING = re.compile(r"^`(?P<name>[^`]+)`(?: — .*)?$", re.M)
DOC_TYPE = re.compile(r"`(\w+)` (int8|int16|int32|int64|float32|float64|string|bool|"
                      r"list<\w+>)\b")


def sections(part: str) -> dict[str, str]:
    """Heading (a file, as the docstring names it) -> the text under it."""
    marks = list(HEADING.finditer(part))
    return {m["name"]: part[m.start():(marks[k + 1].start() if k + 1 < len(marks) else None)]
            for k, m in enumerate(marks)}


def doc_parts() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    doc = schema.__doc__
    store, rest = doc.split(STUDY_PART, 1)
    study, explanations = rest.split(EXPLANATIONS_PART, 1)
    return sections(store), sections(study), sections(explanations)


def arrow_type(t) -> str:
    """As the docstring spells types: float32 (Arrow's "float"), list<int64>."""
    name = re.sub(r"list<item: (\w+)>", r"list<\1>", str(t))
    return re.sub(r"\b(float|double)\b", lambda m: {"float": "float32", "double": "float64"}[m[1]],
                  name)


def check_table(section: str, file: Path, skip: set[str] = frozenset()) -> list[str]:
    """Columns of `file` the section does not name, or names with another type."""
    found = pq.read_schema(file)
    problems = [f"{file.name}: column {name} not in the docstring" for name in found.names
                if name not in skip and f"`{name}`" not in section]
    for name, written in DOC_TYPE.findall(section):
        if name in found.names and arrow_type(found.field(name).type) != written:
            problems.append(f"{file.name}: {name} is {arrow_type(found.field(name).type)}, "
                            f"the docstring says {written}")
    return problems


def check_keys(section: str, keys, what: str) -> list[str]:
    return [f"{what}: key {key} not in the docstring" for key in keys if f"`{key}`" not in section
            and not re.search(rf"\b{key}\b", section.split("\n", 1)[1])]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("doc") / "store"
    build_synthetic_store(path, n_features=(16, 32), d_mlp=8, n_tokens=10_000, d_vocab=64)
    write_synthetic_explanations(path)
    return path


def test_every_store_column_and_manifest_key_is_documented(store):
    part, _, _ = doc_parts()
    manifest = json.loads((store / schema.MANIFEST).read_text())
    problems = check_keys(part["manifest.json"], manifest, "manifest.json")
    problems += check_keys(part["manifest.json"], ("name", "kind", "n_features", "act_hist_edges"),
                           "manifest.json dictionaries")
    for rel in manifest["tables"]:
        heading = re.sub(r"dictionary=[^/]+/", "dictionary=<name>/", rel)
        assert heading in part, f"{rel}: no section `{heading}` in schema.py's docstring"
        # metrics.parquet: the stats stage may add columns (the docstring says so)
        extra = set(pq.read_schema(store / rel).names) - set(schema.METRIC_COLUMNS) \
            if rel == schema.METRICS else set()
        problems += check_table(part[heading], store / rel, extra)
    assert not problems, "\n".join(problems)


def test_every_explanations_column_and_manifest_key_is_documented(store):
    _, _, part = doc_parts()
    folder = store / schema.EXPLANATIONS
    manifest = json.loads((folder / schema.EXPLANATIONS_MANIFEST).read_text())
    info = {"explainer", "explain_split", "score_split", "synthetic"}  # the caller's info
    problems = check_keys(part[schema.EXPLANATIONS_MANIFEST], set(manifest) - info,
                          "explanations manifest")
    for summary in manifest["dictionaries"].values():
        problems += check_keys(part[schema.EXPLANATIONS_MANIFEST], summary,
                               "explanations manifest, per dictionary")
    for rel in manifest["tables"]:
        heading = "explanations/" + re.sub(r"dictionary=[^/]+/", "dictionary=<name>/", rel)
        assert heading in part, f"{rel}: no section `{heading}` in schema.py's docstring"
        problems += check_table(part[heading], folder / rel)
    assert not problems, "\n".join(problems)


def test_every_study_store_column_and_manifest_key_is_documented(tmp_path):
    _, part, _ = doc_parts()
    n = 4
    record = {"variant": "a", "other": "b", "dictionary": "neurons", "n_active": np.ones(n),
              "best_match": np.arange(n), "best_corr": np.full(n, 0.5),
              "second_match": np.zeros(n), "second_corr": np.full(n, 0.1),
              "logit_corr": np.full(n, 0.2), "decoder_cosine": np.full(n, np.nan),
              "directions_comparable": False, "same_model": False, "n_tokens": 10}
    write_study_store(tmp_path, [{"name": "a", "store": "a"}, {"name": "b", "store": "b"}],
                      [record], n_tokens=10)
    manifest = json.loads((tmp_path / schema.MANIFEST).read_text())
    problems = check_keys(part["manifest.json"], manifest, "study manifest.json")
    for rel in manifest["tables"]:
        assert rel in part, f"{rel}: no section in schema.py's study docstring"
        problems += check_table(part[rel], tmp_path / rel)
    assert not problems, "\n".join(problems)
