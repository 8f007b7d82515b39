"""The warmed launcher (`python -m dashboard.serve`) and the Procfile that runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from feature_store.synthetic import build_synthetic_store

ROOT = Path(__file__).resolve().parents[1]
WARM_AND_REPORT = ("import sys; from dashboard import serve; print(serve.warm()); "
                   "print('torch loaded' if 'torch' in sys.modules else 'no torch')")


def warm_in_fresh_process(store: Path) -> list[str]:
    """A new interpreter, as at a server start: nothing imported, no cache filled."""
    done = subprocess.run([sys.executable, "-c", WARM_AND_REPORT], cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "FEATURE_STORE": str(store)})
    assert done.returncode == 0, done.stderr
    assert "No runtime found" not in done.stderr  # the cache_data warnings are silenced
    return done.stdout.splitlines()


def test_warm_opens_the_store_and_never_imports_torch(tmp_path):
    store = tmp_path / "store"
    build_synthetic_store(store, n_features=(32, 64), d_mlp=16, n_tokens=5_000)
    summary, torch = warm_in_fresh_process(store)
    assert summary.startswith("dashboard warmed in ")
    assert f"store {store} opened, 3 dictionaries read" in summary  # neurons + two SAEs
    assert torch == "no torch"  # only the prompt explorer may load the model


def test_warm_leaves_a_missing_store_to_the_pages(tmp_path):
    summary, _ = warm_in_fresh_process(tmp_path / "nowhere")
    assert "not usable yet" in summary and "the pages say how to build it" in summary


def test_procfile_serves_the_warmed_app_on_port():
    (line,) = [l for l in (ROOT / "Procfile").read_text().splitlines() if l.strip()]
    kind, command = line.split(":", 1)
    args = shlex.split(command)
    assert kind == "web" and args[:3] == ["python", "-m", "dashboard.serve"]
    options = dict(zip(args[3::2], args[4::2]))
    assert options == {"--server.port": "$PORT", "--server.address": "0.0.0.0",
                       "--server.headless": "true", "--browser.gatherUsageStats": "false"}
