"""Universality: /universality?run=<run>&other=<run>&dictionary=<name>[&feature=<index>].

Only a study has it (several runs on the same tokens); a single run's server says how to
build one."""

from dashboard import universality_views, url_state

root = universality_views.study()
if root is None:
    url_state.require_store()
    universality_views.not_a_study()
else:
    url_state.require_store()
    universality_views.universality_page(root, url_state.chosen_run(root))
