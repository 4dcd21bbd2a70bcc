"""Machinery the locate-then-edit methods (ROME, MEMIT, AlphaEdit) share.

- `EditRequest` / `prepare_requests`: facts and their tokenised prompts over context templates;
- `template_keys` / `average_keys` / `request_keys`: keys k* at the subject's last token;
- `optimise_targets`: the δ vectors for many facts in one batched pass;
- `select_layers`: `layer auto`, one layer per fact;
- `spread_over_layers`: MEMIT's residual spreading, with the solve passed in;
- `spread_in_rounds`: rounds of targets and spreading (`passes`), MEMIT's and AlphaEdit's;
- `second_moment_for`, `EditResult`, `templates_for`: small shared pieces;
- `extend_factor`: a running sum of key outer products as a low-rank factor.
"""
from editspec.lazy import lazy_names

# The names load lazily (PEP 562): `editspec check` imports the torch-free settings module
# (`target_settings`) through this package and must not pull in torch with it.
_WHERE = {
    "common": ("EditResult", "StatsSource", "extend_factor", "factor_of_gram", "least_squares_update", "second_moment_for",
               "templates_for"),
    "keys": ("average_keys", "collect_at", "keys_at", "request_keys", "template_keys"),
    "layers": ("layer_scores", "select_layers"),
    "requests": ("KL_PROMPT", "EditRequest", "PreparedRequest", "flatten_groups", "prepare_requests"),
    "rounds": ("round_settings", "spread_in_rounds"),
    "spread": ("Solver", "request_key_matrix", "revert_all", "spread_over_layers"),
    "target_settings": ("ResidualTargetSettings",),
    "targets": ("OptimSettings", "Targets", "frozen", "optimise_targets"),
}
__getattr__ = lazy_names(__name__, {name: f".{module}" for module, names in _WHERE.items() for name in names})


__all__ = [
    "EditRequest", "EditResult", "KL_PROMPT", "OptimSettings", "PreparedRequest", "ResidualTargetSettings", "Solver", "StatsSource",
    "Targets", "average_keys", "collect_at", "keys_at", "extend_factor", "factor_of_gram", "flatten_groups", "frozen", "layer_scores", "least_squares_update",
    "optimise_targets", "prepare_requests", "request_key_matrix", "request_keys", "revert_all", "round_settings",
    "second_moment_for", "select_layers", "spread_in_rounds", "spread_over_layers", "template_keys", "templates_for",
]
