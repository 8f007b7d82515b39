"""One frozen config per stage, loaded from a TOML preset plus `--set section.key=value`.

A preset is a plain file a user can copy and edit. Every key is checked against the stage's
dataclass: an unknown key, a wrong type or an impossible value raises `ConfigError` naming the
file (or `--set`), the key and the value, before anything in the run folder is touched.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from feature_store.recipes import RECIPES, Recipe, recipe
from pipelines.devices import check_device

SAE_CODES = ("auto", "bag", "csr")  # the layouts of pipelines/sae/codes.py
SAE_PRECISIONS = ("auto", "fp32", "bf16")  # encoder selection (pipelines/sae/autoencoder.py)
GRAPH_CHOICES = ("auto", "on", "off")  # CUDA graph replay of a step (pipelines/graph_capture.py)
UMAP_BESIDE = ("auto", "on", "off")  # the stats stage's UMAP in a second process (pipelines/stats/umap_beside.py)
from pipelines.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}", key=key)


@dataclass(frozen=True)
class CorpusConfig:
    """Where the text comes from.

    `embedded` is the Python installation's own standard library source (code, docstrings,
    comments) plus `pydoc_data`'s help topics: present on every machine, no download.
    """

    source: str = "embedded"  # embedded | files | huggingface
    paths: tuple[str, ...] = ()  # files: .txt, .jsonl, .parquet files or folders of them
    text_column: str = "text"  # the field of .jsonl records / column of .parquet files
    hf_dataset: str = ""  # huggingface only (online); e.g. "NeelNanda/pile-10k"
    hf_split: str = "train"
    max_chars: int = 10_000_000  # cap on the corpus; 0 means no cap
    min_doc_chars: int = 64  # shorter documents are dropped as noise
    seed: int = 0  # fixes the document order

    def __post_init__(self) -> None:
        _require(self.source in ("embedded", "files", "huggingface"), "corpus.source", self.source,
                 "must be one of embedded, files, huggingface")
        _require(self.source != "files" or bool(self.paths), "corpus.paths", self.paths,
                 "corpus.source=files needs at least one path")
        _require(self.source != "huggingface" or bool(self.hf_dataset), "corpus.hf_dataset",
                 self.hf_dataset, "corpus.source=huggingface needs a dataset name")
        _require(self.max_chars >= 0, "corpus.max_chars", self.max_chars, "must be >= 0")
        _require(self.min_doc_chars >= 1, "corpus.min_doc_chars", self.min_doc_chars, "must be >= 1")


@dataclass(frozen=True)
class TokenizerConfig:
    """Byte-level BPE: every byte sequence is encodable, so no corpus text is ever <unk>."""

    vocab_size: int = 4096  # including the special tokens
    min_frequency: int = 2

    def __post_init__(self) -> None:
        _require(self.vocab_size >= 260, "tokenizer.vocab_size", self.vocab_size,
                 "must be at least 260 (256 bytes plus special tokens)")
        _require(self.vocab_size <= 1_000_000, "tokenizer.vocab_size", self.vocab_size,
                 "must be at most 1,000,000")
        _require(self.min_frequency >= 1, "tokenizer.min_frequency", self.min_frequency, "must be >= 1")


@dataclass(frozen=True)
class TokensConfig:
    """Fixed-length sequences, BOS first; validation documents never appear in training."""

    n_ctx: int = 128  # sequence length including BOS; also the model's context
    val_fraction: float = 0.1  # share of tokens held out, by document (see tokens.py)
    min_val_sequences: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        _require(2 <= self.n_ctx <= 8192, "tokens.n_ctx", self.n_ctx, "must be in [2, 8192]")
        _require(0.0 < self.val_fraction < 1.0, "tokens.val_fraction", self.val_fraction,
                 "must be in (0, 1)")
        _require(self.min_val_sequences >= 1, "tokens.min_val_sequences", self.min_val_sequences,
                 "must be >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """A one-layer transformer; defaults are Anthropic's Towards Monosemanticity shape."""

    act_fn: str = "solu_ln"  # solu_ln | gelu
    d_model: int = 128
    d_mlp: int = 512
    n_heads: int = 4
    d_head: int = 32
    train_tokens: int = 2_000_000  # tokens seen in training (epochs repeat); 0 = untrained control
    batch_size: int = 32  # sequences per step
    lr: float = 2e-3
    min_lr_fraction: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between validation evaluations
    eval_sequences: int = 256
    device: str = "auto"  # auto | cpu | cuda
    graph: str = "auto"  # replay each training step as a recorded CUDA graph: auto (on CUDA, one process) | on | off
    seed: int = 0

    # How a step runs, not what it trains (a replayed step is the same step), so changing
    # it rebuilds nothing.
    NOT_HASHED: typing.ClassVar[tuple[str, ...]] = ("graph",)

    def __post_init__(self) -> None:
        _require(self.act_fn in ("solu_ln", "gelu"), "model.act_fn", self.act_fn,
                 "must be solu_ln or gelu")
        for key in ("d_model", "d_mlp", "n_heads", "d_head", "batch_size", "eval_every",
                    "eval_sequences"):
            value = getattr(self, key)
            _require(value > 0, f"model.{key}", value, "must be positive")
        _require(self.train_tokens >= 0, "model.train_tokens", self.train_tokens,
                 "must be >= 0 (0 keeps the seeded initial weights: an untrained control)")
        _require(self.n_heads * self.d_head == self.d_model, "model.d_head", self.d_head,
                 f"n_heads * d_head must equal d_model ({self.n_heads} * {self.d_head} "
                 f"!= {self.d_model})")
        _require(self.lr > 0, "model.lr", self.lr, "must be positive")
        _require(0 <= self.min_lr_fraction <= 1, "model.min_lr_fraction", self.min_lr_fraction,
                 "must be in [0, 1]")
        _require(self.warmup_steps >= 0, "model.warmup_steps", self.warmup_steps, "must be >= 0")
        _require(self.weight_decay >= 0, "model.weight_decay", self.weight_decay, "must be >= 0")
        _require(self.grad_clip > 0, "model.grad_clip", self.grad_clip, "must be positive")
        check_device("model.device", self.device)
        _require(self.graph in GRAPH_CHOICES, "model.graph", self.graph, f"must be one of {', '.join(GRAPH_CHOICES)}")


@dataclass(frozen=True)
class ActivationsConfig:
    """Which tokens' `blocks.0.mlp.hook_post` to cache (validation is always cached whole)."""

    max_tokens: int = 1_000_000  # training tokens cached (a seeded random subset); 0 = all
    shard_tokens: int = 131_072  # activations per Parquet shard (rows x activation columns):
    #                              bounds memory when reading and each writer's share
    batch_size: int = 64  # sequences per forward pass
    device: str = "auto"
    seed: int = 0
    # source = "planted": instead of the model's MLP, a known sparse dictionary seen through a
    # random rotation (the "model"), same shards and tokens: the ground truth that checks the
    # sae, stats and universality stages (pipelines/activations/planted.py).
    source: str = "model"  # model | planted
    planted_features: int = 1024  # planted directions in the d_mlp-dimensional space
    planted_active: float = 8.0  # mean active planted features per token
    planted_families: int = 0  # families of 2 mutually exclusive siblings (splitting truth)
    planted_seed: int = 0  # the dictionary and every token's coefficients
    planted_basis_seed: int = 0  # the rotation: two "models" differ in this alone

    def __post_init__(self) -> None:
        _require(self.max_tokens >= 0, "activations.max_tokens", self.max_tokens, "must be >= 0")
        for key in ("shard_tokens", "batch_size", "planted_features"):
            _require(getattr(self, key) > 0, f"activations.{key}", getattr(self, key), "must be positive")
        _require(self.source in ("model", "planted"), "activations.source", self.source,
                 "must be model or planted")
        _require(self.planted_active > 0, "activations.planted_active", self.planted_active,
                 "must be positive")
        _require(0 <= 2 * self.planted_families <= self.planted_features,
                 "activations.planted_families", self.planted_families,
                 "must be >= 0 with 2 x families <= planted_features")
        check_device("activations.device", self.device)


@dataclass(frozen=True)
class SaeConfig:
    """Every dictionary size trains from one shuffled pass over the cached activations.

    λ (`l1_coefficient`) is on the scale of Anthropic's 2024 recipe, which SAELens' standard
    SAE also uses: inputs scaled to mean norm sqrt(d_mlp), loss = Σ_dims (x − x̂)² + λ·Σ f_i‖d_i‖
    per token (‖d_i‖ = 1 for l1-unit, so both L1 recipes read λ the same way). Because the
    inputs are normalised, a λ does not depend on the activations' units; it still trades
    reconstruction for sparsity differently on different data, so `target_l0` asks for a
    sparsity instead: λ is then calibrated during training (pipelines/sae/calibration.py).
    """

    dict_sizes: tuple[int, ...] = (512, 1024, 2048)
    recipe: str = "topk"  # topk | l1 | l1-unit (see pipelines/sae/autoencoder.py)
    k: int = 24  # topk: active features per token
    l1_coefficient: float = 5.0  # l1, l1-unit: λ (Anthropic 2024's value on this scale)
    target_l0: float = 0.0  # l1, l1-unit: calibrate λ so L0 ≈ this (0: keep l1_coefficient)
    aux_k: int = 256  # topk: dead features that reconstruct the residual (AuxK)
    aux_coefficient: float = 0.03125  # topk: α = 1/32, on OpenAI's normalised scale
    aux_one_sided: bool = True  # topk: AuxK only raises dead features (false: OpenAI's form, which also buries them)
    dead_window: int = 100_000  # a feature that has not fired in this many tokens is dead
    resample_at: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)  # l1-unit: fractions of training at which dead features are resampled ([] = never)
    lr: float = 1e-3
    lr_decay_fraction: float = 0.2  # linear decay to 0 over this last share of steps
    l1_warmup_fraction: float = 0.05  # l1, l1-unit: λ ramps up over this first share of steps
    grad_clip: float = 1.0  # l1: gradient norm clip
    batch_size: int = 4096
    epochs: int = 1
    buffer_tokens: int = 262_144  # shuffle buffer (memory bound)
    eval_sequences: int = 512  # validation sequences for CE loss recovered and KL
    device: str = "auto"
    codes: str = "auto"  # sparse products: auto (bag on CUDA, csr on CPU) | bag (embedding-bag kernels) | csr (MKL / cuSPARSE)
    precision: str = "auto"  # encoder matmul that selects the active features: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    graph: str = "auto"  # replay each TopK step as a recorded CUDA graph: auto (on CUDA, one process) | on | off
    seed: int = 0

    # How a step computes, not what it trains: the same SAE up to float rounding (bf16 can
    # swap a feature tied at the k-th place), so changing them rebuilds nothing.
    NOT_HASHED: typing.ClassVar[tuple[str, ...]] = ("codes", "precision", "graph")

    @property
    def recipe_spec(self) -> Recipe:
        """What the recipe is (`feature_store/recipes.py`): every recipe-dependent choice
        reads a flag of this record, never the name."""
        return recipe(self.recipe)

    def __post_init__(self) -> None:
        _require(bool(self.dict_sizes) and min(self.dict_sizes) > 0, "sae.dict_sizes",
                 self.dict_sizes, "must be a non-empty list of positive sizes")
        _require(len(set(self.dict_sizes)) == len(self.dict_sizes), "sae.dict_sizes",
                 self.dict_sizes, "sizes must be distinct")
        _require(self.recipe in RECIPES, "sae.recipe", self.recipe,
                 f"must be one of {', '.join(RECIPES)}")
        _require(not self.recipe_spec.top_k or 0 < self.k <= min(self.dict_sizes), "sae.k",
                 self.k, "must be in [1, smallest dictionary size]")
        _require(all(0 < f < 1 for f in self.resample_at), "sae.resample_at", self.resample_at,
                 "fractions must be in (0, 1)")
        for key in ("lr", "batch_size", "epochs", "buffer_tokens", "eval_sequences", "dead_window"):
            _require(getattr(self, key) > 0, f"sae.{key}", getattr(self, key), "must be positive")
        _require(self.l1_coefficient > 0 or (self.l1_coefficient == 0 and self.target_l0 == 0),
                 "sae.l1_coefficient", self.l1_coefficient,
                 "must be > 0 (it is also where the target_l0 calibration starts)")
        _require(0 <= self.target_l0 < min(self.dict_sizes), "sae.target_l0", self.target_l0,
                 "must be 0 (off) or in (0, smallest dictionary size)")
        for key in ("lr_decay_fraction", "l1_warmup_fraction"):
            _require(0 <= getattr(self, key) < 1, f"sae.{key}", getattr(self, key), "must be in [0, 1)")
        _require(self.l1_warmup_fraction < 1 - self.lr_decay_fraction, "sae.l1_warmup_fraction",
                 self.l1_warmup_fraction, "must end before the lr decay starts (1 - sae.lr_decay_fraction)")
        _require(self.buffer_tokens >= self.batch_size, "sae.buffer_tokens", self.buffer_tokens,
                 "must be at least sae.batch_size")
        check_device("sae.device", self.device)
        _require(self.codes in SAE_CODES, "sae.codes", self.codes, f"must be one of {', '.join(SAE_CODES)}")
        _require(self.precision in SAE_PRECISIONS, "sae.precision", self.precision,
                 f"must be one of {', '.join(SAE_PRECISIONS)}")
        _require(self.graph in GRAPH_CHOICES, "sae.graph", self.graph, f"must be one of {', '.join(GRAPH_CHOICES)}")
        _require(self.graph != "on" or self.recipe_spec.top_k, "sae.graph", self.graph,
                 "'on' needs a TopK recipe (an L1 step's ReLU codes vary in size); use auto or off")
        _require(self.graph != "on" or self.codes != "csr", "sae.graph", self.graph,
                 "'on' needs sae.codes = bag or auto (cuSPARSE's CSR products are not recorded)")


@dataclass(frozen=True)
class StatsConfig:
    """The statistics pass behind the feature store (see `pipelines/stats/stage.py` and the modules
    it names).

    Defaults follow Towards Monosemanticity's dashboards: 11 intervals (fixed by the store
    schema), a handful of uniformly drawn examples per interval, ~20 top examples, a context
    window long enough to read and short enough to scan.
    """

    split: str = "val"  # val: held-out documents, never seen by the model or the SAEs
    max_tokens: int = 0  # cap on the tokens the statistics cover (whole sequences); 0 = all
    batch_tokens: int = 8192  # tokens per step: bounds memory (codes are [batch, d_sae])
    top_k: int = 20  # top-activating examples per feature
    examples_per_interval: int = 5  # drawn uniformly at random within each of the 11 intervals
    window_before: int = 12  # context tokens shown before the example token
    window_after: int = 4  # and after it (clipped to the sequence)
    act_hist_bins: int = 40  # log10-spaced activation histogram bins, shared per dictionary
    n_logits: int = 20  # top and bottom logit-weight tokens stored per feature
    logit_hist_bins: int = 40
    n_neighbours: int = 10  # nearest features (same dictionary) and counterparts (others)
    n_aligned_neurons: int = 5
    split_candidates: int = 3  # decoder-cosine candidates per feature for splitting edges
    # A splitting edge parent -> child needs all three (pipelines/stats/splitting.py says why):
    split_min_decoder_cosine: float = 0.5  # cosine of the two decoder directions
    split_min_containment: float = 0.7  # share of the child's Σ act² where the parent fires
    split_min_activation_cosine: float = 0.4  # activation cosine over the child's tokens
    umap: bool = True  # joint 2-D UMAP of decoder directions (numba JIT: see directions.py)
    umap_neighbours: int = 15
    # lay the UMAP out in a second process while passes 1-3 run: auto (when they leave a core
    # idle: on CUDA, or more cores than torch's threads) | on | off; the same layout either way
    umap_beside: str = "auto"
    code_cache_mb: int = 1024  # keep pass 1's sparse top-k codes for pass 2 when they fit (else re-encode)
    device: str = "auto"
    seed: int = 0
    # Where passes 1-3 run (pipelines/stats/ray_engine.py; docs/scaling.md "Statistics on Ray"): "local" in
    # this process, or "ray": one Ray worker per CPU over the activation shards, same store.
    # how the pass runs, not what it computes (the engines write identical stores): left out
    # of the stage's config hash, so switching engine does not make the store stale
    NOT_HASHED: typing.ClassVar[tuple[str, ...]] = ("engine", "ray_address", "ray_workers",
                                                     "umap_beside")
    engine: str = "local"
    ray_address: str = ""  # "" = start a local Ray for the run; else ray.init(address=...)
    ray_workers: int = 0  # workers (Ray actors); 0 = one per CPU Ray offers (local: os.cpu_count())

    def __post_init__(self) -> None:
        _require(self.split in ("val", "train"), "stats.split", self.split, "must be val or train")
        _require(self.engine in ("local", "ray"), "stats.engine", self.engine,
                 "must be local or ray")
        _require(self.umap_beside in UMAP_BESIDE, "stats.umap_beside", self.umap_beside,
                 "must be auto, on or off")
        _require(self.ray_workers >= 0, "stats.ray_workers", self.ray_workers, "must be >= 0")
        _require(self.max_tokens >= 0, "stats.max_tokens", self.max_tokens, "must be >= 0")
        for key in ("batch_tokens", "top_k", "examples_per_interval", "act_hist_bins",
                    "n_logits", "logit_hist_bins", "n_neighbours", "n_aligned_neurons",
                    "split_candidates", "umap_neighbours"):
            _require(getattr(self, key) > 0, f"stats.{key}", getattr(self, key), "must be positive")
        _require(self.top_k < 2**15, "stats.top_k", self.top_k, "must be < 32768")
        _require(self.examples_per_interval < 2**15, "stats.examples_per_interval",
                 self.examples_per_interval, "must be < 32768")
        for key in ("window_before", "window_after"):
            _require(0 <= getattr(self, key) <= 1024, f"stats.{key}", getattr(self, key),
                     "must be in [0, 1024]")
        for key in ("split_min_decoder_cosine", "split_min_containment",
                    "split_min_activation_cosine"):
            _require(0.0 <= getattr(self, key) <= 1.0, f"stats.{key}", getattr(self, key),
                     "must be in [0, 1]")
        check_device("stats.device", self.device)


@dataclass(frozen=True)
class InterpConfig:
    """Automated interpretability (issue 13; `pipelines/interp/stage.py`): explain every unit from
    training-split examples, score the explanation on held-out validation examples.

    Defaults: the explain pass reads ~131k training tokens (it is most of the stage's time;
    on the tiny run twice as many changed no dictionary's median score by more than 0.02);
    windows of the store's shape; 128 random windows (most do not fire) give both the
    explainer its base rates and the random-only simulation score its data.
    """

    explainer: str = "token-patterns"  # token-patterns (offline) | llm (pipelines/interp/llm.py)
    explain_tokens: int = 131_072  # training tokens the explain pass covers (whole sequences)
    batch_tokens: int = 8192
    top_k: int = 20  # top training windows per unit to explain from
    examples_per_interval: int = 5  # plus this many from each of the 11 intervals
    # (windows have the store's shape, stats.window_before/after: the explain and the
    # held-out score windows must look alike; pipelines/activations/windows.py)
    random_windows: int = 128  # random windows, training (explain) and validation (score)
    neighbours: int = 3  # nearest units whose top windows give detection's hard negatives
    neighbour_windows: int = 4  # top windows taken from each neighbour
    max_patterns: int = 5  # token-patterns: at most this many in an explanation
    min_support: int = 2  # token-patterns: a pattern must match this many explain tokens
    fire_fraction: float = 0.1  # a window fires when it reaches this share of the unit's max
    logit_tokens: int = 10  # top positive-logit tokens the logit score asks about
    random_logit_tokens: int = 20  # random vocabulary tokens they are mixed with
    llm_base_url: str = ""  # llm: an OpenAI-compatible endpoint, e.g. http://localhost:8080/v1
    llm_model: str = ""  # llm: model name; the key is read from OPENAI_API_KEY, never stored
    llm_concurrency: int = 4
    llm_timeout_s: float = 60.0
    llm_max_retries: int = 4
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.explainer in ("token-patterns", "llm"), "interp.explainer",
                 self.explainer, "must be token-patterns or llm")
        _require(self.explainer != "llm" or bool(self.llm_base_url and self.llm_model),
                 "interp.explainer", self.explainer,
                 "llm needs interp.llm_base_url and interp.llm_model")
        for key in ("explain_tokens", "batch_tokens", "top_k", "examples_per_interval",
                    "random_windows", "neighbours", "neighbour_windows", "max_patterns",
                    "min_support", "logit_tokens", "random_logit_tokens", "llm_concurrency",
                    "llm_max_retries"):
            _require(getattr(self, key) > 0, f"interp.{key}", getattr(self, key),
                     "must be positive")
        _require(0 < self.fire_fraction <= 1, "interp.fire_fraction", self.fire_fraction,
                 "must be in (0, 1]")
        _require(self.llm_timeout_s > 0, "interp.llm_timeout_s", self.llm_timeout_s,
                 "must be positive")
        check_device("interp.device", self.device)


@dataclass(frozen=True)
class RunConfig:
    """Every stage's config; one section per stage in the TOML file."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    sae: SaeConfig = field(default_factory=SaeConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    interp: InterpConfig = field(default_factory=InterpConfig)

    def section(self, name: str) -> Any:
        return getattr(self, name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: asdict(getattr(self, f.name)) for f in fields(self)}


SECTIONS: dict[str, type] = {f.name: f.default_factory().__class__ for f in fields(RunConfig)}  # type: ignore[misc]
# Read only by `python -m pipelines study` (pipelines/study/config.py); a plain run ignores them,
# so one preset serves both.
STUDY_SECTIONS = ("variants", "universality")


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """A resolved config as TOML that `--config` reads back to the same config."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str):
            return json.dumps(v)  # a TOML basic string: the same escapes
        return repr(v)

    blocks = []
    for name, body in sections.items():
        lines = [f"[{name}]"] + [f"{k} = {value(v)}" for k, v in body.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def config_hash(section: Any) -> str:
    """Stable across runs and machines: sorted JSON of the dataclass's fields, but those its
    `NOT_HASHED` names (how a stage runs, never what it writes)."""
    fields = {k: v for k, v in asdict(section).items()
              if k not in getattr(section, "NOT_HASHED", ())}
    blob = json.dumps(fields, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _coerce(cls: type, section: str, key: str, value: Any, where: str) -> Any:
    """Check `value` against the dataclass field's annotation; ints are accepted as floats."""
    expected = typing.get_type_hints(cls)[key]
    name = f"{section}.{key}"
    origin = typing.get_origin(expected)
    if origin is tuple:
        inner = typing.get_args(expected)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {name}={value!r}: expected a list of {inner.__name__}",
                              key=name)
        return tuple(_coerce_scalar(inner, name, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation for {name}")  # a bug in this file, not input
    return _coerce_scalar(expected, name, value, where)


def _coerce_scalar(expected: type, name: str, value: Any, where: str) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{where}: {name}={value!r}: expected int, got bool", key=name)
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: {name}={value!r}: expected {expected.__name__}, "
                          f"got {type(value).__name__}", key=name)
    return value


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value`; value is read as a TOML literal, falling back to a bare string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. model.act_fn=gelu")
    lhs, raw = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key.strip(), value


def build_config(raw: dict[str, Any], source: str, overrides: list[str] = (),
                 layer: tuple[str, dict[str, Any]] | None = None) -> RunConfig:
    """Validate every section and key of `raw` (a parsed TOML file), then apply overrides,
    then `layer` ((where, {section: {key: value}}): a study variant's settings, which win)."""
    merged: dict[str, dict[str, tuple[Any, str]]] = {}
    for section, body in raw.items():
        if section in STUDY_SECTIONS:
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]; known: {sorted(SECTIONS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        merged[section] = {k: (v, source) for k, v in body.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if section in STUDY_SECTIONS:
            raise ConfigError(f"--set {text!r}: [{section}] is read by `python -m pipelines study`, "
                              f"not by `run`")
        if section not in SECTIONS:
            raise ConfigError(f"--set {text!r}: unknown section {section!r}; known: {sorted(SECTIONS)}")
        merged.setdefault(section, {})[key] = (value, "--set")
    if layer is not None:
        where, body = layer
        for section, keys in body.items():
            if section not in SECTIONS or not isinstance(keys, dict):
                raise ConfigError(f"{where}: unknown section {section!r}; known: {sorted(SECTIONS)}")
            for key, value in keys.items():
                merged.setdefault(section, {})[key] = (value, where)
    sections = {}
    for name, cls in SECTIONS.items():
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, (value, where) in merged.get(name, {}).items():
            if key not in known:
                raise ConfigError(f"{where}: unknown key {name}.{key}={value!r}; "
                                  f"known keys of [{name}]: {sorted(known)}", key=f"{name}.{key}")
            kwargs[key] = _coerce(cls, name, key, value, where)
        try:
            sections[name] = cls(**kwargs)
        except ConfigError as err:
            # Name where the offending key was set: the preset file or --set.
            key = (err.key or "").split(".", 1)[-1]
            where = merged.get(name, {}).get(key, (None, source))[1]
            raise ConfigError(f"{where}: {err}", key=err.key) from None
    return RunConfig(**sections)


def load_config(preset: str | None, config_file: str | None, overrides: list[str]) -> RunConfig:
    """A preset name (pipelines/presets/<name>.toml) or a user's TOML file, plus overrides."""
    raw, path = read_config_file(preset, config_file)
    return build_config(raw, str(path), overrides)


def read_config_file(preset: str | None, config_file: str | None) -> tuple[dict[str, Any], Path]:
    """The parsed TOML of a preset or a user's file, and its path."""
    if config_file is not None:
        path = Path(config_file)
    else:
        path = PRESET_DIR / f"{preset or 'tiny'}.toml"
        if not path.exists():
            known = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
            raise ConfigError(f"unknown preset {preset!r}; known presets: {known}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return raw, path
