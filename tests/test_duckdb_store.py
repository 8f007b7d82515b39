"""A cluster's readers take the store and the activation cache as they are: DuckDB here
(Spark and Ray Data read the same hive-partitioned Parquet). Nothing is converted first."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from feature_store import schema
from pipelines.activations.shards import count_rows, read_shard, shard_paths

PER_DICTIONARY = (schema.FEATURES, schema.EXAMPLES, schema.LOGITS, schema.NEIGHBOURS)


@pytest.fixture(scope="module")
def manifest(mini_run) -> dict:
    return json.loads((mini_run / "store" / "manifest.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("table", PER_DICTIONARY)
def test_hive_partitioned_tables_read_whole(mini_run, manifest, table):
    """One glob gives every dictionary with a `dictionary` column; per-dictionary row counts
    equal the manifest's, and the columns are the schema's."""
    glob = str(mini_run / "store" / table / "*" / "*.parquet")
    con = duckdb.connect()
    rows = con.execute(f"SELECT dictionary, count(*) FROM read_parquet('{glob}', "
                       "hive_partitioning=true) GROUP BY dictionary").fetchall()
    want = {path.split("dictionary=")[1].split("/")[0]: n
            for path, n in manifest["tables"].items() if path.startswith(f"{table}/")}
    assert want, f"the manifest lists no {table} partitions"
    assert dict(rows) == {d: n for d, n in want.items() if n > 0}
    columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{glob}', "
                                         "hive_partitioning=true)").fetchall()]
    assert set(schema.TABLE_SCHEMAS[table].names) | {"dictionary"} == set(columns)


def test_every_dictionary_has_features(mini_run, manifest):
    glob = str(mini_run / "store" / schema.FEATURES / "*" / "*.parquet")
    got = duckdb.sql(f"SELECT dictionary, count(*) AS n, max(index) AS top FROM "
                     f"read_parquet('{glob}', hive_partitioning=true) GROUP BY dictionary"
                     ).fetchall()
    assert {d: (n, top) for d, n, top in got} == {
        d["name"]: (d["n_features"], d["n_features"] - 1) for d in manifest["dictionaries"]}


def test_shared_tables_read_as_they_are(mini_run, manifest):
    for path, n in manifest["tables"].items():
        if "/" in path:
            continue
        got = duckdb.sql(f"SELECT count(*) FROM read_parquet('{mini_run / 'store' / path}')")
        assert got.fetchall()[0][0] == n, path


@pytest.mark.parametrize("split", ["train", "val"])
def test_activation_shards_read_by_duckdb(mini_run, split):
    """All shards of a split by one glob: the row count of the footers, and the float16
    activations come back as the same numbers (DuckDB widens them to FLOAT)."""
    act = mini_run / "activations"
    glob = str(act / f"{split}-*.parquet")
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0] == \
        count_rows(act, split)
    first = shard_paths(act, split)[0]
    want = read_shard(first, columns=("seq_id", "position", "acts"))
    got = duckdb.sql(f"SELECT seq_id, position, acts FROM read_parquet('{first}') "
                     "LIMIT 50").fetchall()
    np.testing.assert_array_equal([r[0] for r in got], want["seq_id"][:50])
    np.testing.assert_array_equal([r[1] for r in got], want["position"][:50])
    np.testing.assert_array_equal(np.array([r[2] for r in got], np.float32), want["acts"][:50])
