"""Screenshots of every dashboard page for the README and docs/dashboard.md:
`python docs/screenshots.py [STORE] [--only overview,feature,...]`.

Serves the app on a free localhost port against STORE (default runs/tiny/store), drives
Debian's chromium with Playwright (never a downloaded browser), waits for the plotly charts
and writes docs/screenshots/<page>.png.

The scoring pages are shown against a throwaway score file (never the run's own): the Score
page with a real blind queue at its first unit, the Results page with *random* ratings from
two made-up raters, so the picture shows the page's layout, not a finding.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def seed_scores(fs, path: Path) -> None:
    """A blind queue for rater `demo`; random ratings by `r1` and `r2` (for the layout only)."""
    from feature_store.scores import RUBRIC, ScoreBook

    book = ScoreBook(path)
    population = {d: [int(i) for i in fs.features(d).query("density > 0")["index"]]
                  for d in fs.dictionaries()}
    book.make_queue("demo", population, 20, 0)
    rng = random.Random(0)
    for unit in book.make_queue("r1", population, 24, 1).units:
        for rater in ("r1", "r2"):
            items = {item: rng.randint(lo, hi) for item, (lo, hi) in RUBRIC.items()}
            book.submit(rater, *unit, {**items, "interpretation": "random, for the screenshot"})


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--only")]
    only = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--only=")), "")
    store = args[0] if args else "runs/tiny/store"
    sys.path.insert(0, str(ROOT))
    from feature_store import FeatureStore
    from feature_store.study_store import StudyStore, is_study_store

    if is_study_store(store):  # a study: its overview and the Universality page
        study = StudyStore.open(store)
        first, second = (study.variants() + study.variants())[:2]
        big = study.store(first).dictionaries()[-1]
        shoot(store, {"study_overview": "",
                      "universality": f"universality?run={first}&other={second}&dictionary={big}"},
              {}, only, {})
        return
    fs = FeatureStore.open(store)
    big = fs.dictionaries()[-1]
    feats = fs.features(big)
    normal = feats[feats.density_class == "normal"].sort_values("density", ascending=False)
    feature = int(normal["index"].iloc[len(normal) // 3])
    splits = fs.splits()
    fam_d, fam_i = (splits.iloc[0]["dictionary_b"], int(splits.iloc[0]["index_b"])) if len(splits) else (big, feature)
    scores = Path(tempfile.mkdtemp()) / "scores.sqlite"
    seed_scores(fs, scores)
    pages = {
        "overview": "",
        "browser": f"browser?dictionary={big}",
        "feature": f"feature?dictionary={big}&feature={feature}",
        "feature_ablation": f"feature?dictionary={big}&feature={feature}&shade=ablation",
        "compare": f"compare?dictionary={big}&feature={feature}",
        "splitting": f"splitting?dictionary={fam_d}&feature={fam_i}",
        "prompt": f"prompt?dictionary={big}",
        "score": "score?rater=demo&pos=1",
        "results": "results",
        "explanations": "",  # the overview, scrolled to its automated-explanations section
    }
    if "neurons_pre_ln" in fs.dictionaries():  # SoLU: a neuron before and after the LayerNorm
        pre = fs.features("neurons_pre_ln")
        pre = pre[pre.density_class == "normal"].sort_values("density", ascending=False)
        neuron = int(pre["index"].iloc[len(pre) // 4])
        pages["pre_ln"] = f"compare?dictionary=neurons_pre_ln&feature={neuron}"
    scroll_to = {"explanations": "text=Automated explanations"}
    shoot(store, pages, scroll_to, only, {"FEATURE_SCORES": str(scores)})


def shoot(store: str, pages: dict[str, str], scroll_to: dict[str, str], only: str,
          env: dict[str, str]) -> None:
    """Serve `store`, open each page in chromium, save docs/screenshots/<name>.png."""
    from playwright.sync_api import sync_playwright

    if only:
        pages = {k: v for k, v in pages.items() if k in only.split(",")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dashboard.serve", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT,
                            env={**os.environ, "FEATURE_STORE": store, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for name, path in pages.items():
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                page.goto(f"{base}/{path}")
                try:
                    page.wait_for_selector(".js-plotly-plot, [data-testid='stDataFrame'], textarea", timeout=20_000)
                except Exception:
                    pass
                time.sleep(3)
                if name in scroll_to:
                    page.locator(scroll_to[name]).first.evaluate(
                        "e => e.scrollIntoView({block: 'start'})")
                    time.sleep(1)
                page.screenshot(path=str(out / f"{name}.png"), full_page=False)
                page.close()
                print(f"{name}: {out / f'{name}.png'}")
            browser.close()
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
