from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from pipelines.config import (PRESET_DIR, SECTIONS, ConfigError, RunConfig, _coerce, build_config,
                              load_config, parse_override, read_config_file)


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
def test_every_preset_loads(preset):
    cfg = load_config(preset, None, [])
    assert cfg.model.n_heads * cfg.model.d_head == cfg.model.d_model


def test_presets_exist():
    assert {"tiny", "small", "paper"} <= {p.stem for p in PRESET_DIR.glob("*.toml")}


def test_override_parses_toml_literals():
    assert parse_override("model.lr=1e-3") == ("model", "lr", 1e-3)
    assert parse_override("model.act_fn=gelu") == ("model", "act_fn", "gelu")
    assert parse_override('corpus.paths=["a", "b"]') == ("corpus", "paths", ["a", "b"])


def test_override_wins_and_is_typed():
    cfg = load_config("tiny", None, ["model.act_fn=gelu", "model.lr=1", "corpus.paths=[\"x\"]"])
    assert cfg.model.act_fn == "gelu"
    assert cfg.model.lr == 1.0 and isinstance(cfg.model.lr, float)
    assert cfg.corpus.paths == ("x",)


@pytest.mark.parametrize("override, fragment", [
    ("model.foo=1", "unknown key model.foo"),
    ("nosuch.key=1", "unknown section"),
    ("model.d_mlp=abc", "model.d_mlp='abc': expected int"),
    ("model.d_mlp=0", "model.d_mlp=0: must be positive"),
    ("model.d_head=16", "n_heads * d_head must equal d_model"),
    ("model.act_fn=relu", "model.act_fn='relu'"),
    ("tokens.n_ctx=1", "tokens.n_ctx=1"),
    ("model.batch_size=true", "expected int, got bool"),
    ("model", "expected section.key=value"),
])
def test_bad_overrides_name_key_and_value(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", None, [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_file_names_the_file(tmp_path: Path):
    path = tmp_path / "mine.toml"
    path.write_text("[model]\nd_mlp = -4\n")
    with pytest.raises(ConfigError, match=r"mine\.toml: model\.d_mlp=-4"):
        load_config(None, str(path), [])
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(None, str(path), [])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nope", None, [])


def test_configs_are_frozen():
    cfg = build_config({}, "x")
    with pytest.raises(FrozenInstanceError):
        cfg.model.d_mlp = 3  # type: ignore[misc]


@pytest.mark.parametrize("overrides, key, where", [
    (["model.d_mlp=0"], "model.d_mlp", "--set"),
    (["stats.split_min_containment=2"], "stats.split_min_containment", "--set"),
    (["model.foo=1"], "model.foo", "--set"),
    (["sae.k=true"], "sae.k", "--set"),
    ([], "model.d_mlp", "mine.toml"),
])
def test_config_errors_carry_the_key_and_where_it_was_set(tmp_path: Path, overrides, key, where):
    path = tmp_path / "mine.toml"
    path.write_text("[model]\nd_mlp = -4\n" if not overrides else "[model]\nd_mlp = 512\n")
    with pytest.raises(ConfigError) as err:
        load_config(None, str(path), overrides)
    assert err.value.key == key
    assert str(err.value).startswith(f"{path if where != '--set' else '--set'}: ")


def test_device_error_names_the_section_that_asked(monkeypatch):
    import torch

    from pipelines.devices import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", "stats") == "cpu"
    with pytest.raises(ConfigError, match=r"^stats\.device='cuda'") as err:
        pick_device("cuda", "stats")
    assert err.value.key == "stats.device"


def test_stats_engine_is_not_part_of_the_stats_hash():
    """The engines write identical stores, so switching engine must not make a store stale;
    any key that changes what stats computes still does."""
    from pipelines.config import config_hash, load_config

    base = load_config("tiny", None, []).stats
    ray = load_config("tiny", None, ["stats.engine=ray", "stats.ray_workers=3"]).stats
    other = load_config("tiny", None, ["stats.n_neighbours=3"]).stats
    assert config_hash(ray) == config_hash(base)
    assert config_hash(other) != config_hash(base)


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
def test_presets_state_only_what_differs_from_the_defaults(preset):
    """A preset restating a default hides which settings are the preset's own (and goes stale
    when the default moves): every key in a preset file must differ from its default."""
    raw, path = read_config_file(preset, None)
    defaults = RunConfig()
    same = [f"{section}.{key}" for section, body in raw.items() if section in SECTIONS
            for key, value in body.items()
            if _coerce(SECTIONS[section], section, key, value, str(path))
            == getattr(defaults.section(section), key)]
    assert not same, f"{path} restates defaults: {same}"


def test_config_command_prints_every_key_and_reads_back(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["config", "--preset", "paper", "--set", "sae.k=16"]) == 0
    text = capsys.readouterr().out
    for section in SECTIONS:
        assert f"[{section}]" in text
    saved = tmp_path / "full.toml"
    saved.write_text(text)
    assert load_config(None, str(saved), []) == load_config("paper", None, ["sae.k=16"])
