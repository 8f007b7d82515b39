"""Prompt explorer: /prompt?dictionary=<name>&text=...&feature=<i>&mode=ablate|clamp&value=<v>&pos=<p>.

Type text, see its tokens with the strongest features of a dictionary, pick a feature to shade
it, then ablate or clamp it and see how the next-token distribution changes. Loads the live
model once per server (the only page that does)."""

import numpy as np
import streamlit as st

from dashboard import prompt_views, url_state
from feature_store.errors import FeatureNotFound, StoreError

DEFAULT_TEXT = 'def read_config(path):\n    """Return the parsed file."""\n    with open(path) as fh:\n        return json.load(fh)'

path = url_state.require_store()
try:
    live = prompt_views.live_run(path)
except StoreError as err:
    url_state.stop_with(f"The prompt explorer needs the model behind this store: {err}", build_hint=True)

st.subheader("Prompt explorer")
params = st.query_params
text = st.text_area("Prompt", value=params.get("text", DEFAULT_TEXT), height=110)
names = live.dictionaries()
asked = params.get("dictionary", names[1] if len(names) > 1 else names[0])
if asked not in names:
    url_state.stop_with(f"Unknown dictionary {asked!r}; this run has {', '.join(names)}.", build_hint=False)
dictionary = st.selectbox("Dictionary", names, index=names.index(asked))
if not text.strip():
    st.info("Type a prompt.")
    st.stop()
acts = prompt_views.prompt_activations(path, text, dictionary)
if len(acts.tokens) < 2:
    st.info("The prompt has no tokens after BOS.")
    st.stop()

active = np.flatnonzero(acts.acts.max(0) > 0)
active = active[np.argsort(-acts.acts.max(0)[active])]
try:
    feature = int(params.get("feature", active[0] if len(active) else 0))
    if not 0 <= feature < live.n_features(dictionary):
        raise FeatureNotFound(f"feature {feature} is out of range for {dictionary!r} "
                              f"(0..{live.n_features(dictionary) - 1})")
except (ValueError, FeatureNotFound) as err:
    url_state.stop_with(f"Bad feature {params.get('feature')!r}: {err}", build_hint=False)

options = [int(i) for i in active[:200]]
if feature not in options:
    options = [feature, *options]
left, right = st.columns([3, 2], gap="medium")
with right:
    feature = st.selectbox("Feature (active in this prompt first, by max activation)", options,
                           index=options.index(feature),
                           format_func=lambda i: f"#{i} (max {acts.acts[:, i].max():.2f})")
    mode = st.radio("Intervention", ["ablate", "clamp"], horizontal=True,
                    index=0 if params.get("mode", "ablate") == "ablate" else 1)
    value, everywhere = 0.0, False
    if mode == "clamp":
        value = st.number_input("Clamp to", value=float(params.get("value", float(acts.acts[:, feature].max()) * 2 or 5.0)))
        everywhere = st.checkbox("Everywhere (not only where the feature fires)",
                                 value=params.get("everywhere", "0") == "1")
url_state.keep_in_url(dictionary=dictionary, text=text, feature=str(feature), mode=mode,
                      **({"value": f"{value:g}", "everywhere": "1" if everywhere else "0"} if mode == "clamp" else {}))

with left:
    st.markdown(f"**{dictionary} #{feature}** activation on each token "
                f"([feature page]({prompt_views.links.feature_url(dictionary, feature)}))")
    st.html(prompt_views.tokens_html(acts, acts.acts[:, feature], "act", "activation"))
    changes = prompt_views.intervention(path, text, dictionary, feature, mode, float(value), everywhere)
    kl = np.array([c.kl for c in changes])
    st.markdown(f"KL(before ‖ after) of the next-token distribution at each token after **{mode}**"
                + (f" to {value:g}" if mode == "clamp" else ""))
    st.html(prompt_views.tokens_html(acts, -kl, "ablation", "KL"))
    default_pos = int(np.argmax(kl)) if kl.max() > 0 else len(changes) - 1
    try:
        asked_pos = min(max(int(params.get("pos", default_pos)), 0), len(changes) - 1)
    except ValueError:
        asked_pos = default_pos
    pos = st.slider("Position", 0, len(changes) - 1, asked_pos)
    url_state.keep_in_url(pos=str(pos))
    prompt_views.change_panel(changes[pos], acts.tokens[pos])

st.markdown("**Strongest features per token**")
st.dataframe(prompt_views.top_features_table(acts, dictionary), hide_index=True,
             column_config=prompt_views.feature_table_config(), width="stretch")
