"""The KV-cache keyword of a model's forward, across transformers versions and wrappers.

transformers 5 renamed `past_key_values` to `cache` (the old name still works, with a
FutureWarning on every call).  A wrapper such as a peft model takes ``**kwargs`` and passes
them on, so the name is read off the model it wraps.

    out = model(input_ids=ids, use_cache=True)
    out = model(input_ids=next_ids, use_cache=True, **{cache_kwarg(model): output_cache(out)})
"""
from __future__ import annotations

import inspect


def cache_kwarg(model) -> str:
    """`cache` where the (wrapped) model's forward takes it, else `past_key_values`."""
    unwrap = getattr(model, "get_base_model", None)  # peft
    inner = unwrap() if callable(unwrap) else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def output_cache(output):
    """The KV cache a forward returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
