"""What the store gives back: plain, typed, immutable data; no rendering, no escaping.

This is the contract between the stats stage (which fills it through `StoreWriter`) and the
dashboard (which reads it through `FeatureStore`). Text fields hold the tokenizer's display
form (spaces as `·`, newlines as `↵`, see `pipelines/data/tokenizer.py`) and are *unescaped*
corpus text: the dashboard escapes them at the last step before HTML.

Sign conventions:
- activations are the dictionary's feature activations (for `neurons`, the raw
  `blocks.0.mlp.hook_post` value, which can be negative for GeLU; for `neurons_pre_ln`, the
  SoLU output at `blocks.0.mlp.ln.hook_in`, before the mid-MLP LayerNorm; statistics over
  "active" values count activations > 0);
- `Example.ablation[t]` is log p(token[t+1] | context, feature removed) − log p(token[t+1] |
  context): negative means the feature was helping predict the next token. It is 0 where
  the feature is inactive and NaN at the last position of the window (no next token shown);
- logit weights are `d_i · W_out · W_U` with the final LayerNorm's scale folded in (see the
  stats stage docstring); positive means the feature raises that token's logit directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Re-exported, defined in schema.py beside the rules they belong to (density classes; the
# dictionary names, kinds and order), so pages and stages can import every name from here.
from feature_store.schema import (  # noqa: F401
    DENSITY_CLASSES, NEURON_DICTIONARIES, NEURONS, NEURONS_PRE_LN, dictionary_order_key,
    is_neurons,
)

N_INTERVALS = 11  # Towards Monosemanticity: 11 equal-width intervals over (0, max activation]


class Unit(NamedTuple):
    """One unit of a store: feature (or neuron) `index` of `dictionary`.

    A NamedTuple rather than a frozen dataclass, on purpose: it is equal to, hashes like and
    sorts like the plain `(dictionary, index)` tuple, so it works as a dict key looked up with
    either, unpacks (`dictionary, index = unit`, `links.open_feature(*unit)`), and is hashed
    by `st.cache_data` as the tuple it replaces (streamlit hashes any tuple by its items)."""

    dictionary: str
    index: int


@dataclass(frozen=True, slots=True)
class Example:
    """A context window around one token where the feature fired."""

    seq_id: int  # row of tokens/train.parquet (or val) the window comes from
    position: int  # position in that sequence of the token the example was drawn for
    center: int  # index of that token within `tokens`
    act: float  # the feature's activation at that token
    tokens: tuple[str, ...]  # display forms of every token in the window
    token_ids: tuple[int, ...]
    acts: tuple[float, ...]  # the feature's activation at every token in the window
    ablation: tuple[float, ...]  # Δ log p(next token) when the feature is removed; see module doc


@dataclass(frozen=True, slots=True)
class Interval:
    lo: float  # [lo, hi); the last interval is closed
    hi: float
    share: float  # share of the feature's active (> 0) activations falling in this interval
    count: int  # how many active activations fell in it
    examples: tuple[Example, ...]  # drawn uniformly at random from the interval


@dataclass(frozen=True, slots=True)
class LogitEntry:
    token: str  # display form
    token_id: int
    value: float


@dataclass(frozen=True, slots=True)
class Neighbour:
    dictionary: str
    index: int
    cosine: float  # decoder-direction cosine (W_out rows for neurons)


@dataclass(frozen=True, slots=True)
class Histogram:
    edges: tuple[float, ...]  # len(counts) + 1
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FeatureRecord:
    """Everything a feature page needs, read in one call."""

    dictionary: str
    index: int
    n_features: int  # size of the dictionary, for previous/next links
    n_tokens: int  # tokens the statistics were computed over
    n_active: int  # tokens where the activation was > 0
    density: float  # n_active / n_tokens
    density_class: str  # one of DENSITY_CLASSES (schema.density_classes)
    mean_act: float  # mean over active tokens
    max_act: float
    act_histogram: Histogram  # log10-spaced bins over active values
    top_examples: tuple[Example, ...]  # highest activations first
    intervals: tuple[Interval, ...]  # N_INTERVALS of them, lowest first
    top_logits: tuple[LogitEntry, ...]  # largest first
    bottom_logits: tuple[LogitEntry, ...]  # most negative first
    logit_histogram: Histogram  # over all d_vocab logit weights
    aligned_neurons: tuple[Neighbour, ...]  # largest |cosine| to W_out rows first
    neighbours: tuple[Neighbour, ...]  # same dictionary, by decoder cosine, self excluded
    counterparts: tuple[tuple[str, tuple[Neighbour, ...]], ...]  # (other dictionary, nearest features)


@dataclass(frozen=True, slots=True)
class SplitEdge:
    """A parent (a, the smaller dictionary) and the child (b) that refines it at the next size."""

    dictionary_a: str
    index_a: int
    dictionary_b: str
    index_b: int
    masked_cosine: float  # activation cosine over the tokens where b fires
    decoder_cosine: float
    containment: float  # share of b's activation energy on tokens where a fires


@dataclass(frozen=True, slots=True)
class Family:
    """A connected group of split edges across sizes, containing the feature asked about."""

    family_id: int
    members: tuple[Unit, ...]  # smallest dictionary first, then index
    edges: tuple[SplitEdge, ...]


# -- explanations (issue 13) ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExplanationRecord:
    """One unit's automated explanation and its held-out scores (`schema.py`, Explanations).

    `explanation` is unescaped text holding token display forms; NaN means undefined (e.g.
    the unit never fired in the random windows, so random-only simulation has nothing to
    predict). `counts` says how many examples stand behind each score."""

    dictionary: str
    index: int
    explainer: str
    explanation: str
    scores: tuple[tuple[str, float], ...]  # (score name, value) in EXPLANATION_SCORES order
    controls: tuple[tuple[str, str, float], ...]  # (control, score name, value)
    single_token: str  # the best single-token explanation (control)
    counts: tuple[tuple[str, int], ...]  # (count column, value)

    def score(self, name: str) -> float:
        return dict(self.scores)[name]
