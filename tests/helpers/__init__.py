"""Code the test modules share (no fixtures: those live in tests/conftest.py).

- `app`: running dashboard pages under Streamlit's AppTest and reading their charts back;
- `scoring`: what the Score and Results page tests check a page with (blindness, widgets);
- `browser`: Debian's chromium, `python -m dashboard.serve` on a free port, and waiting
  for a page to settle;
- `stores`: the synthetic store shapes the session builds once each;
- `cli`: `pipelines.cli.main` run in process, its exit status and output.

Why a package and not test modules importing each other: a test module imported by another
is collected once but its fixtures, imported by name, become a second copy (a second
server, a second store) in the importing module.
"""
