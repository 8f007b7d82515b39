"""A study's config: one base run config, the variants that differ from it, and the study-level
universality stage.

A preset holds both: its stage sections are the base (what `python -m pipelines run` uses),
and `[variants.<name>]` tables say what each variant changes, e.g.

```toml
[variants.solu]
model.act_fn = "solu_ln"

[variants.gelu]
model.act_fn = "gelu"

[variants.seed1]            # the same model, another seed
model.seed = 1

[variants.untrained]        # the control: the seeded initial weights, never trained
model.train_tokens = 0
```

Precedence: preset < `--set section.key=v` (every variant) < the variant's own table <
`--set variants.<name>.section.key=v`. Variants share the corpus, tokenizer and tokens (that
is what makes their units comparable token by token), so a variant that changes any of
those sections is refused. A preset with no variants is a study of one variant, `base`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from pipelines.config import (RunConfig, _coerce, _require, build_config, parse_override,
                              read_config_file)
from pipelines.devices import check_device
from pipelines.errors import ConfigError

SHARED_SECTIONS = ("corpus", "tokenizer", "tokens")  # built once per study
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
BASE_VARIANT = "base"


@dataclass(frozen=True)
class UniversalityConfig:
    """The study-level stage that matches every unit to its best counterpart in every other
    variant (pipelines/universality/stage.py). It always reads the held-out validation tokens,
    which every variant caches whole."""

    batch_tokens: int = 8192  # tokens per step: bounds memory ([batch, d_sae] codes per side)
    max_tokens: int = 0  # cap on the validation tokens compared (whole sequences); 0 = all
    max_matrix_mb: int = 512  # the [n_a, n_b] float64 cross-product held at once; wider pairs
    #                           take several passes over the tokens, one per column block
    device: str = "auto"

    def __post_init__(self) -> None:
        for key in ("batch_tokens", "max_matrix_mb"):
            _require(getattr(self, key) > 0, f"universality.{key}", getattr(self, key),
                     "must be positive")
        _require(self.max_tokens >= 0, "universality.max_tokens", self.max_tokens, "must be >= 0")
        check_device("universality.device", self.device)


@dataclass(frozen=True)
class StudyConfig:
    base: RunConfig  # what the shared stages are built with
    variants: tuple[tuple[str, RunConfig], ...]  # in preset order
    universality: UniversalityConfig
    source: str  # the preset or file, for error messages

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.variants)

    def variant(self, name: str) -> RunConfig:
        return dict(self.variants)[name]


def load_study(preset: str | None, config_file: str | None, overrides: list[str]) -> StudyConfig:
    raw, path = read_config_file(preset, config_file)
    return build_study(raw, str(path), overrides)


def build_study(raw: dict[str, Any], source: str, overrides: list[str] = ()) -> StudyConfig:
    """Validate the base, every variant and the universality section; see the module doc."""
    common, per_variant, uni_sets = [], {}, {}
    for text in overrides:
        section, key, value = parse_override(text)
        if section == "variants":
            parts = key.split(".")
            if len(parts) != 3:
                raise ConfigError(f"--set {text!r}: expected variants.<name>.<section>.<key>=value")
            name, sec, k = parts
            per_variant.setdefault(name, {}).setdefault(sec, {})[k] = value
        elif section == "universality":
            uni_sets[key] = (value, "--set")
        else:
            common.append(text)
    base = build_config(raw, source, common)

    table = raw.get("variants", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [variants] must be a table of [variants.<name>] tables")
    bodies: dict[str, dict] = {}
    for name, body in table.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [variants.{name}] must be a table of section.key = value")
        bodies[name] = {sec: dict(keys) if isinstance(keys, dict) else keys
                        for sec, keys in body.items()}
    for name, body in per_variant.items():  # --set variants.<new>... adds a variant
        for sec, keys in body.items():
            bodies.setdefault(name, {}).setdefault(sec, {}).update(keys)
    if not bodies:
        bodies = {BASE_VARIANT: {}}

    variants = []
    for name, body in bodies.items():
        where = f"{source} [variants.{name}]"
        if not VARIANT_NAME.fullmatch(name):
            raise ConfigError(f"{where}: variant names are letters, digits, '_' and '-' "
                              f"(at most 40), starting with a letter or digit")
        shared = sorted(sec for sec in body if sec in SHARED_SECTIONS)
        if shared:
            raise ConfigError(f"{where}: sets [{', '.join(shared)}]; the variants of a study "
                              f"share the corpus, tokenizer and tokens (set them for all variants "
                              f"at the top level instead)")
        variants.append((name, build_config(raw, source, common, layer=(where, body))))

    uni_raw = raw.get("universality", {})
    if not isinstance(uni_raw, dict):
        raise ConfigError(f"{source}: [universality] must be a table")
    merged = {k: (v, source) for k, v in uni_raw.items()} | uni_sets
    known = {f.name for f in fields(UniversalityConfig)}
    kwargs = {}
    for key, (value, where) in merged.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key universality.{key}={value!r}; known keys of "
                              f"[universality]: {sorted(known)}", key=f"universality.{key}")
        kwargs[key] = _coerce(UniversalityConfig, "universality", key, value, where)
    try:
        universality = UniversalityConfig(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}", key=err.key) from None
    return StudyConfig(base, tuple(variants), universality, source)
