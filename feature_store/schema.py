"""The on-disk layout of a feature store, `runs/<name>/store/`.

Everything is Parquet, readable as is by pandas (`pd.read_parquet`) or DuckDB
(`read_parquet(...)`), plus one `manifest.json`. Per-dictionary tables are hive-partitioned
by dictionary, so `pd.read_parquet("store/features")` or DuckDB's
`read_parquet('store/features/*/*.parquet', hive_partitioning=true)` gives every dictionary
at once with a `dictionary` column, and one dictionary's file can be read alone.

Each table's columns and Arrow types below are, in code, its `*_SCHEMA` in this module
(`TABLE_SCHEMAS`): the writer writes with them and the reader requires those columns with
those types. metrics.parquet, whose types follow the values, has `METRIC_COLUMNS` instead,
required by name. "Dictionary order" is `dictionary_sort_key`'s. tests/test_schema_doc.py
checks that every column and manifest key the writers write is named below, with its type
where one is given.

```
store/
  manifest.json
  vocab.parquet
  metrics.parquet
  density_histograms.parquet
  splits.parquet
  families.parquet
  umap.parquet
  features/dictionary=<name>/part-0.parquet
  examples/dictionary=<name>/part-0.parquet
  logits/dictionary=<name>/part-0.parquet
  neighbours/dictionary=<name>/part-0.parquet
```

Dictionaries are `neurons` (the d_mlp raw MLP neurons, `blocks.0.mlp.hook_post`, as an
identity dictionary), for SoLU models `neurons_pre_ln` (the same neurons before the mid-MLP
LayerNorm, `blocks.0.mlp.ln.hook_in`; kind "neurons"), and one SAE per size, named
`sae_<n_features>` (`dictionary_name`). A dictionary for which a statistic does not apply
says so in its manifest entry (`not_applicable`, below) and simply has no rows in that
table; a reader shows the reason, never a blank.
Feature indices are 0-based rows of the dictionary. Token text is the tokenizer's display
form (spaces `·`, newlines `↵`), unescaped corpus text.

`manifest.json`
    `schema_version` (int, `SCHEMA_VERSION`); `created_at` (ISO 8601, UTC); `n_tokens`
    (tokens the statistics were computed over); `dictionaries`: a list of
    `{name, kind ("neurons" | "sae"), n_features, act_hist_edges, ...free-form info}`, where
    `act_hist_edges` are the activation-histogram bin edges shared by all features of that
    dictionary (log10-spaced); optional info keys: `hook_name` (what its activations read),
    `not_applicable` ({statistic: why}, statistics among `logits`, `neighbours` (which
    covers counterparts and aligned neurons), `umap`, `explanations`), `same_units_as` (the
    dictionary whose unit i is this one's unit i at another hook: neurons ↔ neurons_pre_ln);
    `run`: free-form run info (model `act_fn`, `n_params`, `val_loss`, `unigram_val_loss`,
    `tokens_trained`, `train_passes`, `overfit` (a sentence, "" if the validation curve ended
    near its best), ...) and `metrics`, the metrics table's rows by dictionary (the writer adds it; NaN as
    null); `tables`: every table's relative path with its row count, which the reader checks.

`vocab.parquet` — one row per token id
    `token_id` int32, `display` string.

`metrics.parquet` — one row per dictionary, in dictionary order
    `dictionary`, `n_features`, `l0` (mean active features per token), `mse`, `fvu`
    (fraction of variance unexplained), `ce_loss_recovered` ((CE_zero_abl − CE_dict) /
    (CE_zero_abl − CE_clean)), `ce_loss_recovered_mean_ablation`, `kl_div`, `dead_fraction`
    (never fired on `dead_eval_tokens` evaluation tokens), `dead_eval_tokens`, `n_ultralow`,
    `n_dense`, `recipe`, then whatever extra columns the stats stage added. Missing values
    are null.

`density_histograms.parquet` — the log10 feature-density histogram of each dictionary
    `dictionary`, `bin_lo`, `bin_hi` (log10 of the share of tokens a feature fires on),
    `count` (features in [bin_lo, bin_hi)), in dictionary order. Dead features (density 0)
    are in no bin. When the stats stage gives none, the writer bins the features' densities
    in 0.25-wide bins from ⌊log10(1 / n_tokens)⌋ to 0 (a density outside them counts in the
    nearest end bin).

`splits.parquet` — feature-splitting edges between features of adjacent sizes
    `dictionary_a`, `index_a`, `dictionary_b`, `index_b` (a is the smaller dictionary),
    `masked_cosine` (activation cosine over the tokens where the child b fires),
    `decoder_cosine`, `containment` (share of b's activation energy Σ b² on tokens where a
    fires), `family_id` (the connected group the edge belongs to); sorted by family, then
    a (dictionary order, index), then b. Each feature of the larger dictionary has at most
    one edge to the next smaller size (its parent), so families are trees;
    `pipelines/stats/splitting.py` says when an edge is drawn.

`families.parquet` — members of each family (a connected group of split edges)
    `family_id`, `dictionary`, `index`; sorted by family, then dictionary order, then index.

`umap.parquet` — joint 2-D UMAP of all dictionaries' decoder directions
    `dictionary`, `index`, `x`, `y`, `density` (copied from the features table, for colour);
    in dictionary order. A dictionary may have no rows or only some of its units.

`features/dictionary=<name>/part-0.parquet` — one row per feature, sorted by `index`
    `index` int32; `n_active` int64 (tokens with activation > 0); `density` float64
    (n_active / n_tokens); `mean_act` (over active tokens), `max_act` float32;
    `density_class` string (dead / ultralow / normal / dense: `density_classes`);
    `act_hist_counts` list<int64> (counts per `act_hist_edges` bin of the manifest);
    `interval_counts` list<int64> (11: active activations in each of the equal-width
    intervals over (0, max_act]; the last is closed); `logit_hist_edges` list<float32>,
    `logit_hist_counts` list<int64> (histogram of all d_vocab logit weights; empty lists
    when the dictionary has no logits); `top_tokens` string (for search and browsing: up to
    5 distinct centre tokens of its 10 highest top examples, display forms joined by
    spaces); `top_logits` string (the tokens of up to 5 of its largest logit weights, the
    same way); `examples_offset` int64 and `n_examples` int32 (the feature's row range in
    its examples table).

`examples/dictionary=<name>/part-0.parquet` — example windows, sorted by
    (`feature`, `kind`, `rank`), row groups holding at most `EXAMPLE_FEATURES_PER_ROW_GROUP`
    features each, so one feature's rows come from one row-group read
    `feature` int32; `kind` int8 (`KIND_TOP` = −1 for top-k, 0..10 for the interval the
    example was drawn from uniformly); `rank` int16 (0 = highest for top-k; draw order for
    intervals); `seq_id` int64 (row of the tokens table); `position` int32 (of the drawn
    token in its sequence); `center` int16 (index of that token in the window: a window cut
    off by the start of its sequence is shorter, and its `center` smaller); `act` float32;
    `token_ids` list<int32>, `acts` list<float32> (the feature's activation at each window
    token), `ablation` list<float32> (Δ log p(next token) when the feature is removed; 0
    where inactive, NaN at the last position; see `records`).

`logits/dictionary=<name>/part-0.parquet` — top and bottom logit weights d_i·W_out·W_U
    `feature` int32, `side` string (`top` largest first, `bottom` most negative first),
    `rank` int16, `token_id` int32, `value` float32; sorted by feature, then top before
    bottom, then rank.

`neighbours/dictionary=<name>/part-0.parquet` — nearby units by direction cosine
    `feature` int32; `relation` string (`neighbour`: same dictionary, decoder cosine, self
    excluded; `aligned_neuron`: W_out rows by |cosine|; `counterpart`: nearest features of
    another dictionary); `neighbour_dictionary` string; `rank` int16; `neighbour_index`
    int32; `cosine` float32; sorted by feature, then relation in the order above, then
    dictionary order (neurons first, then SAEs by size), then rank.

A study's store, `runs/<study>/store/` (`feature_store/study_store.py` reads and writes it)
------------------------------------------------------------------------------------------
A study is several variants (e.g. SoLU and GeLU) trained on the same tokens; each variant is
an ordinary run with an ordinary store, and the study's store holds what compares them:

```
store/
  manifest.json
  universality.parquet
  universality_summary.parquet
```

`manifest.json`
    `schema_version` (`STUDY_SCHEMA_VERSION`), `kind` = "study", `created_at`, `n_tokens`
    (validation tokens compared), `variants`: a list of `{name, store}` where `store` is the
    variant's feature store relative to this folder (e.g. `../runs/solu/store`), `tables`.

`universality.parquet` — each unit's best match in another variant
    `variant`, `other`, `dictionary` (a dictionary both have), `index` int32 (the unit in
    `variant`), `n_active` int64 (compared tokens where it is > 0), `best_match` int32 (the
    unit of `other`'s same dictionary with the highest Pearson correlation of activations
    over the same tokens; −1 when the unit never varies), `best_corr` float32,
    `second_match` int32, `second_corr` float32, `logit_corr` float32 (correlation of the two
    units' logit weights over the vocabulary; null for `neurons_pre_ln`, which has none),
    `decoder_cosine` float32 (cosine of the two decoder directions, only when both variants
    share the model's weights; null otherwise, because two models' MLP bases are unrelated). Sorted by variant, other (study order),
    dictionary order, index. Both directions of a pair are present (a→b and b→a).

`universality_summary.parquet` — one row per (variant, other, dictionary)
    `variant`, `other`, `dictionary`, `n_units` int32, `n_compared` int32 (units with a
    defined correlation), `median_best_corr`, `mean_best_corr`, `share_above_0_5`,
    `share_above_0_9`, `median_logit_corr` float64 (over compared units),
    `directions_comparable` bool, `same_model` bool (the two variants have the same model
    weights and the same cached activations, so they differ only in their SAEs: the SAE-seed control, which bounds how much
    two models' features can agree), `median_decoder_cosine` float64 (of the compared units
    and their best matches; null unless directions are comparable), `n_tokens` int64.

Explanations (issue 13), `store/explanations/`, written by the interp stage after the rest
------------------------------------------------------------------------------------------
The interp stage (`pipelines/interp/stage.py`) explains every unit from *training-split* examples
and scores the explanation on *held-out validation* examples; it writes into the store
folder afterwards, so the folder is absent until interp has run (the reader then returns
None) and is removed whenever the stats stage rebuilds the store:

```
store/explanations/
  _manifest.json                       (underscore: pyarrow's dataset readers skip it)
  dictionary=<name>/part-0.parquet
```

`_manifest.json`
    `version` (`EXPLANATIONS_VERSION`), `created_at`, `explainer` (e.g. `token-patterns`),
    `explain_split` ("train"), `score_split` ("val"), `config` (the interp stage's),
    `dictionaries`: per dictionary `{n_units, n_scored, medians: {score: median over units
    with a defined value}, controls: {control: {score: median}}, counts: {score: units with a
    defined value}}`, `tables` (relative path -> row count, which the reader checks).

`explanations/dictionary=<name>/part-0.parquet` — one row per unit, sorted by `index`
    `index` int32; `explainer` string; `explanation` string (readable text; token display
    forms inside quotes, unescaped); the scores, float32, NaN where undefined:
    `sim_top_random` (Pearson of simulated vs true activations over top, interval and random
    held-out windows), `sim_random` (random windows only), `detection` (balanced accuracy,
    firing vs non-firing random windows), `detection_neighbours` (negatives from the nearest
    neighbours' top windows), `logits` (AUC of the top positive-logit tokens against random
    tokens); the counts behind them, int32: `n_explain_windows` (training windows the
    explanation was fitted on), `n_score_windows` (held-out top and interval windows),
    `n_random_windows`, `n_detection_positive`, `n_detection_random`,
    `n_detection_neighbour`, `n_logit_tokens`; controls, float32: `shuffled_sim_top_random`,
    `shuffled_detection`, `shuffled_logits` (the unit scored with another unit's
    explanation), `single_token` string and `single_token_sim_top_random`,
    `single_token_detection` (its best single-token explanation). `pipelines/interp/scoring.py`
    defines every score.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2  # bump on any change a reader of the previous version would misread

MANIFEST = "manifest.json"
VOCAB = "vocab.parquet"
METRICS = "metrics.parquet"
DENSITY_HISTOGRAMS = "density_histograms.parquet"
SPLITS = "splits.parquet"
FAMILIES = "families.parquet"
UMAP = "umap.parquet"

FEATURES = "features"  # per-dictionary tables: <table>/dictionary=<name>/part-0.parquet
EXAMPLES = "examples"
LOGITS = "logits"
NEIGHBOURS = "neighbours"
PER_DICTIONARY_TABLES = (FEATURES, EXAMPLES, LOGITS, NEIGHBOURS)

KIND_TOP = -1  # examples.kind for top-k examples; 0..N_INTERVALS-1 for interval samples
LOGIT_SIDES = ("top", "bottom")
RELATIONS = ("neighbour", "aligned_neuron", "counterpart")  # the sort order in neighbours
# Dictionary names and kinds (the manifest's `kind`). The neuron dictionaries are identity
# dictionaries over the raw MLP neurons: no decoder of their own, never in families.
NEURONS = "neurons"  # the d_mlp raw MLP neurons, `blocks.0.mlp.hook_post`
NEURONS_PRE_LN = "neurons_pre_ln"  # SoLU models: the same neurons before the mid-MLP LayerNorm
NEURON_DICTIONARIES = (NEURONS, NEURONS_PRE_LN)
NEURON_KIND, SAE_KIND = "neurons", "sae"
DICTIONARY_KINDS = (NEURON_KIND, SAE_KIND)

# One feature page reads one row group: bounded features per group keep that read small
# (tens of kilobytes) however large the dictionary; benchmarks/store_read.py measures it.
EXAMPLE_FEATURES_PER_ROW_GROUP = 16

# features.density_class, from the share of tokens a feature fires on (`density_classes`):
# dead (<= 0), ultralow (< ULTRALOW_DENSITY), normal (<= DENSE_DENSITY), dense (above).
DENSITY_CLASSES = ("dead", "ultralow", "normal", "dense")
ULTRALOW_DENSITY = 1e-5
DENSE_DENSITY = 1e-1

# Columns metrics.parquet always has, in this order; extra ones follow. Their types follow
# the values given (a column nobody filled is float64 nulls), so there is no Arrow schema.
METRIC_COLUMNS = ("dictionary", "n_features", "l0", "mse", "fvu", "ce_loss_recovered",
                  "ce_loss_recovered_mean_ablation", "kl_div", "dead_fraction",
                  "dead_eval_tokens", "n_ultralow", "n_dense", "recipe")

# Every other table's columns and types, exactly as the writer writes them. The reader
# requires these columns with these types (extra columns are ignored), so a table is
# described once, here.
VOCAB_SCHEMA = pa.schema([("token_id", pa.int32()), ("display", pa.string())])
DENSITY_HISTOGRAMS_SCHEMA = pa.schema([("dictionary", pa.string()), ("bin_lo", pa.float64()),
                                       ("bin_hi", pa.float64()), ("count", pa.int64())])
SPLITS_SCHEMA = pa.schema([
    ("dictionary_a", pa.string()), ("index_a", pa.int32()), ("dictionary_b", pa.string()),
    ("index_b", pa.int32()), ("masked_cosine", pa.float32()), ("decoder_cosine", pa.float32()),
    ("containment", pa.float32()), ("family_id", pa.int32()),
])
FAMILIES_SCHEMA = pa.schema([("family_id", pa.int32()), ("dictionary", pa.string()),
                             ("index", pa.int32())])
UMAP_SCHEMA = pa.schema([("dictionary", pa.string()), ("index", pa.int32()),
                         ("x", pa.float32()), ("y", pa.float32()), ("density", pa.float64())])
FEATURES_SCHEMA = pa.schema([
    ("index", pa.int32()), ("n_active", pa.int64()), ("density", pa.float64()),
    ("mean_act", pa.float32()), ("max_act", pa.float32()), ("density_class", pa.string()),
    ("act_hist_counts", pa.list_(pa.int64())), ("interval_counts", pa.list_(pa.int64())),
    ("logit_hist_edges", pa.list_(pa.float32())), ("logit_hist_counts", pa.list_(pa.int64())),
    ("top_tokens", pa.string()), ("top_logits", pa.string()),
    ("examples_offset", pa.int64()), ("n_examples", pa.int32()),
])
EXAMPLES_SCHEMA = pa.schema([
    ("feature", pa.int32()), ("kind", pa.int8()), ("rank", pa.int16()),
    ("seq_id", pa.int64()), ("position", pa.int32()), ("center", pa.int16()),
    ("act", pa.float32()), ("token_ids", pa.list_(pa.int32())),
    ("acts", pa.list_(pa.float32())), ("ablation", pa.list_(pa.float32())),
])
LOGITS_SCHEMA = pa.schema([
    ("feature", pa.int32()), ("side", pa.string()), ("rank", pa.int16()),
    ("token_id", pa.int32()), ("value", pa.float32()),
])
NEIGHBOURS_SCHEMA = pa.schema([
    ("feature", pa.int32()), ("relation", pa.string()), ("neighbour_dictionary", pa.string()),
    ("rank", pa.int16()), ("neighbour_index", pa.int32()), ("cosine", pa.float32()),
])
STUDY_SCHEMA_VERSION = 2  # 2: the summary's same_model and median_decoder_cosine
UNIVERSALITY = "universality.parquet"
UNIVERSALITY_SUMMARY = "universality_summary.parquet"
UNIVERSALITY_SCHEMA = pa.schema([
    ("variant", pa.string()), ("other", pa.string()), ("dictionary", pa.string()),
    ("index", pa.int32()), ("n_active", pa.int64()), ("best_match", pa.int32()),
    ("best_corr", pa.float32()), ("second_match", pa.int32()), ("second_corr", pa.float32()),
    ("logit_corr", pa.float32()), ("decoder_cosine", pa.float32()),
])
UNIVERSALITY_SUMMARY_SCHEMA = pa.schema([
    ("variant", pa.string()), ("other", pa.string()), ("dictionary", pa.string()),
    ("n_units", pa.int32()), ("n_compared", pa.int32()), ("median_best_corr", pa.float64()),
    ("mean_best_corr", pa.float64()), ("share_above_0_5", pa.float64()),
    ("share_above_0_9", pa.float64()), ("median_logit_corr", pa.float64()),
    ("directions_comparable", pa.bool_()), ("same_model", pa.bool_()),
    ("median_decoder_cosine", pa.float64()), ("n_tokens", pa.int64()),
])
STUDY_TABLE_SCHEMAS: dict[str, pa.Schema] = {
    UNIVERSALITY: UNIVERSALITY_SCHEMA, UNIVERSALITY_SUMMARY: UNIVERSALITY_SUMMARY_SCHEMA,
}

# Table name (a file, or a per-dictionary table's folder) -> its schema; all but METRICS.
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    VOCAB: VOCAB_SCHEMA, DENSITY_HISTOGRAMS: DENSITY_HISTOGRAMS_SCHEMA, SPLITS: SPLITS_SCHEMA,
    FAMILIES: FAMILIES_SCHEMA, UMAP: UMAP_SCHEMA, FEATURES: FEATURES_SCHEMA,
    EXAMPLES: EXAMPLES_SCHEMA, LOGITS: LOGITS_SCHEMA, NEIGHBOURS: NEIGHBOURS_SCHEMA,
}

# Dictionary names become folder names (hive partitions): keep them to a safe alphabet.
DICTIONARY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def density_classes(density: np.ndarray) -> np.ndarray:
    """The DENSITY_CLASSES name of each density (share of tokens with activation > 0).

    One rule for the writer's density_class column and the SAE stage's ultralow / dense
    counts, so a class never means two things."""
    density = np.asarray(density, dtype=np.float64)
    codes = np.select([density <= 0, density < ULTRALOW_DENSITY, density <= DENSE_DENSITY],
                      [0, 1, 2], default=3)
    return np.asarray(DENSITY_CLASSES, dtype=object)[codes]


def is_neurons(name: str) -> bool:
    """Whether `name` is a neuron dictionary (`neurons`, `neurons_pre_ln`), not an SAE."""
    return name in NEURON_DICTIONARIES


def dictionary_kind(name: str) -> str:
    """The manifest `kind` a dictionary of this name has: "neurons" or "sae"."""
    return NEURON_KIND if is_neurons(name) else SAE_KIND


def dictionary_sort_key(name: str, kind: str, n_features: int) -> tuple:
    """Neurons first, then SAEs by size ascending, then name: the order pages list
    dictionaries in and the order of dictionaries in the manifest and the tables."""
    return (kind != NEURON_KIND, int(n_features), name)


def dictionary_order_key(name: str, n_features: int) -> tuple:
    """`dictionary_sort_key` where only the name and size are known (the kind follows from
    the name): a study's tables, the dashboard's lists."""
    return dictionary_sort_key(name, dictionary_kind(name), n_features)


def dictionary_name(n_features: int) -> str:
    """The name of the SAE dictionary with `n_features` features, e.g. `sae_2048`."""
    return f"sae_{n_features}"


def partition_path(table: str, dictionary: str) -> str:
    """Relative path of one dictionary's file of a per-dictionary table."""
    return f"{table}/dictionary={dictionary}/part-0.parquet"


# -- explanations (issue 13): store/explanations/, written by the interp stage ----------------
EXPLANATIONS = "explanations"
EXPLANATIONS_MANIFEST = "_manifest.json"
EXPLANATIONS_VERSION = 1  # its own version: a store without explanations is still schema 2
# The scores, in the order pages show them, with what a reader sees as their name.
EXPLANATION_SCORES = {
    "sim_top_random": "simulation (top + random)",
    "sim_random": "simulation (random only)",
    "detection": "detection",
    "detection_neighbours": "detection (neighbour negatives)",
    "logits": "logit AUC",
}
EXPLANATION_CONTROLS = {  # control -> {score: column}
    "shuffled": {"sim_top_random": "shuffled_sim_top_random", "detection": "shuffled_detection",
                 "logits": "shuffled_logits"},
    "single_token": {"sim_top_random": "single_token_sim_top_random",
                     "detection": "single_token_detection"},
}
EXPLANATION_COUNTS = ("n_explain_windows", "n_score_windows", "n_random_windows",
                      "n_detection_positive", "n_detection_random", "n_detection_neighbour",
                      "n_logit_tokens")
EXPLANATIONS_SCHEMA = pa.schema(
    [("index", pa.int32()), ("explainer", pa.string()), ("explanation", pa.string())]
    + [(name, pa.float32()) for name in EXPLANATION_SCORES]
    + [(name, pa.int32()) for name in EXPLANATION_COUNTS]
    + [("shuffled_sim_top_random", pa.float32()), ("shuffled_detection", pa.float32()),
       ("shuffled_logits", pa.float32()), ("single_token", pa.string()),
       ("single_token_sim_top_random", pa.float32()), ("single_token_detection", pa.float32())])
