"""Every colour the pages draw data with, and where each comes from. Constants only: no
colour is ever computed from corpus text.

Two families, kept apart on purpose:
- what a unit does to a token (the token shading, the logit tables and histograms): D3's
  category10 orange, blue and red (#FF7F0E, #1F77B4, #D62728; matplotlib's tab:orange /
  tab:blue / tab:red, plotly's `qualitative.D3`). They are *not* plotly.py's default colours:
  its "plotly" template cycles `qualitative.Plotly` (#636EFA, #EF553B, ...);
- which dictionary a mark belongs to: `qualitative.Plotly` minus its orange #FFA15A, which
  sits close to the activation orange, so a dictionary's colour never reads as "this token
  fired".
"""

from __future__ import annotations

import numpy as np
from plotly.colors import qualitative, sample_colorscale

from feature_store.records import N_INTERVALS

# What a unit does to a token, as (r, g, b) for CSS rgba() with a computed alpha
ACTIVATION_RGB = (255, 127, 14)  # #FF7F0E, category10 orange: readable under black text
RAISE_RGB = (31, 119, 180)  # #1F77B4, category10 blue: the unit raised log p (or a logit)
LOWER_RGB = (214, 39, 40)  # #D62728, category10 red: it lowered it


def hex_colour(rgb: tuple[int, int, int]) -> str:
    """`#1f77b4`: an RGB triple as plotly and CSS take it."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    """A CSS colour with an alpha printed to 2 decimals (the token shading's)."""
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f})"


# The activation histogram's bars, one colour per interval (N_INTERVALS, lowest first):
# ColorBrewer's sequential "Oranges" sampled evenly from 0.25 of the scale to its darkest end.
INTERVAL_COLOURS = sample_colorscale("Oranges", list(np.linspace(0.25, 1.0, N_INTERVALS)))

# One palette for every page: the n-th dictionary in store order gets the n-th colour
# (`charts.dictionary_colours`); see the module docstring for why #FFA15A is left out.
DICTIONARY_PALETTE = tuple(c for c in qualitative.Plotly if c != "#FFA15A")
UNLISTED_DICTIONARY = "#444"  # a dictionary a page was not given a colour for
