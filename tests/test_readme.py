"""The README's code map names every module of the three packages, and only modules that
exist: a map that drifts from the tree misleads the newcomer it is for."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_map() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Code map")
    return text[start: text.index("\n## ", start + 1)]


def _modules() -> set[Path]:
    """Every module a newcomer would look for (pages are listed as `app_pages/`)."""
    return {p.relative_to(ROOT) for pkg in ("pipelines", "feature_store", "dashboard")
            for p in (ROOT / pkg).rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py") and "app_pages" not in p.parts}


def test_code_map_names_every_module():
    named = set(re.findall(r"`([\w/]+\.py)`", _code_map()))
    missing = sorted(str(m) for m in _modules() if m.name not in {Path(n).name for n in named})
    assert not missing, f"README code map misses {missing}"


def test_code_map_names_only_modules_that_exist():
    names = {m.name for m in _modules()}
    stale = sorted(n for n in re.findall(r"`([\w/]+\.py)`", _code_map())
                   if Path(n).name not in names | {"__init__.py"})
    assert not stale, f"README code map names modules that do not exist: {stale}"


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
