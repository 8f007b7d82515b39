"""Prompt explorer: /prompt?dictionary=<name>&text=...&feature=<i>&mode=ablate|clamp&value=<v>&pos=<p>.

Type text, see its tokens with the strongest features of a dictionary, pick a feature to shade
it, then ablate or clamp it and see how the next-token distribution changes. Loads the live
model once per server (the only page that does). The URL is the last view; what no longer
fits the prompt, dictionary or feature is dropped (see prompt_views)."""

import numpy as np
import streamlit as st

from dashboard import prompt_views, url_state
from feature_store.errors import StoreError

DEFAULT_TEXT = 'def read_config(path):\n    """Return the parsed file."""\n    with open(path) as fh:\n        return json.load(fh)'

path = url_state.require_store()
try:
    live = prompt_views.live_run(path)
except StoreError as err:
    url_state.stop_with(f"The prompt explorer needs the model behind this store: {err}", build_hint=True)

st.subheader("Prompt explorer")
url = {key: st.query_params[key] for key in st.query_params}  # the last view, before rewriting
names = live.dictionaries()
default_dictionary = url_state.first_sae(names)
asked = url.get("dictionary", default_dictionary)
if asked not in names:
    url_state.stop_with(f"Unknown dictionary {asked!r}; this run has {', '.join(names)}.", build_hint=False)
text = st.text_area("Prompt", value=url.get("text", DEFAULT_TEXT), height=110)
dictionary = st.selectbox("Dictionary", names, index=names.index(asked))
if not text.strip():
    st.info("Type a prompt.")
    st.stop()
acts = prompt_views.prompt_activations(path, text, dictionary)
if len(acts.tokens) < 2:
    st.info("The prompt has no tokens after BOS.")
    st.stop()

peak = acts.acts.max(0)
active = np.flatnonzero(peak > 0)
active = active[np.argsort(-peak[active])]
strongest = int(active[0]) if len(active) else 0
try:
    feature = prompt_views.feature_for(url.get("feature"), asked, dictionary,
                                       live.n_features(dictionary), strongest)
except prompt_views.BadFeature as err:
    url_state.stop_with(str(err), build_hint=False)

options = [int(i) for i in active[:200]]
if feature not in options:
    options = [feature, *options]
left, right = st.columns([3, 2], gap="medium")
with right:
    feature = st.selectbox("Feature (active in this prompt first, by max activation)", options,
                           index=options.index(feature),
                           format_func=lambda i: f"#{i} (max {acts.acts[:, i].max():.2f})")
    mode = st.radio("Intervention", ["ablate", "clamp"], horizontal=True,
                    index=0 if url.get("mode", "ablate") == "ablate" else 1)
    value, everywhere = 0.0, False
    if mode == "clamp":
        value = st.number_input("Clamp to", value=float(url.get("value", float(acts.acts[:, feature].max()) * 2 or 5.0)))
        everywhere = st.checkbox("Everywhere (not only where the feature fires)",
                                 value=url.get("everywhere", "0") == "1")
unchanged = prompt_views.same_view(
    url, {"text": text, "dictionary": dictionary, "feature": str(feature)},
    {"text": DEFAULT_TEXT, "dictionary": default_dictionary, "feature": str(strongest)})
url_state.keep_in_url(dictionary=dictionary, text=text, feature=str(feature), mode=mode,
                      **({"value": f"{value:g}", "everywhere": "1" if everywhere else "0"} if mode == "clamp" else {}))
if mode != "clamp":
    for key in ("value", "everywhere"):
        st.query_params.pop(key, None)

with left:
    changes = prompt_views.intervention(path, text, dictionary, feature, mode, float(value), everywhere)
    kl = np.array([c.kl for c in changes])
    pos = prompt_views.position_for(
        widget=st.session_state.get(prompt_views.POSITION_KEY), url=url.get("pos"),
        same_view=unchanged, default=prompt_views.default_position(acts.acts[:, feature], kl),
        n_positions=len(changes))
    st.session_state[prompt_views.POSITION_KEY] = pos
    st.markdown(f"**{dictionary} #{feature}** activation on each token "
                f"([feature page]({prompt_views.links.feature_url(dictionary, feature)})) · "
                "click a token to pick the position")
    prompt_views.token_strip(prompt_views.tokens_html(acts, acts.acts[:, feature], "act", "activation"),
                             pos, key="strip_act")
    st.markdown(f"KL(before ‖ after) of the next-token distribution at each token after **{mode}**"
                + (f" to {value:g}" if mode == "clamp" else ""))
    prompt_views.token_strip(prompt_views.tokens_html(acts, -kl, "ablation", "KL"), pos, key="strip_kl")
    pos = st.slider("Position", 0, len(changes) - 1, key=prompt_views.POSITION_KEY)
    url_state.keep_in_url(pos=str(pos))
    prompt_views.change_panel(changes[pos], acts.tokens[pos],
                              prompt_views.silent_note(changes[pos], feature, mode))

st.markdown("**Strongest features per token**")
st.dataframe(prompt_views.top_features_table(acts, dictionary), hide_index=True,
             column_config=prompt_views.feature_table_config(), width="stretch")
