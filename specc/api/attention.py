"""MultiHeadAttention in the Python API, with Keras's call signature: mha(query, value, key=None,
attention_mask=None, use_causal_mask=False). A layer keeps one call signature (which inputs it takes, and
whether it is causal), since its spec says so; calling it differently raises a ValueError."""

from __future__ import annotations

from typing import Any

from ..layers.base import REGISTRY
from .layer import SpecLayer


class MultiHeadAttention(SpecLayer):
    _spec_cls = REGISTRY["MultiHeadAttention"]
    __doc__ = ("Keras's `MultiHeadAttention` layer on specc: MultiHeadAttention(num_heads, key_dim, value_dim, "
               "dropout, use_bias, output_shape, attention_axes, ...), called as mha(query, value, key=None, "
               "attention_mask=None, use_causal_mask=False). Arguments and defaults: see the README's layer table.")

    def __call__(self, query: Any = None, value: Any = None, key: Any = None, query_mask: Any = None,
                 value_mask: Any = None, key_mask: Any = None, attention_mask: Any = None,
                 return_attention_scores: bool = False, training: bool | None = None,
                 use_causal_mask: bool | None = None, **kwargs: Any) -> Any:
        if any(m is not None for m in (query_mask, value_mask, key_mask)) or kwargs.get("mask") is not None:
            raise NotImplementedError("Keras masks (query_mask, value_mask, key_mask) are not supported by specc; "
                                      "pass an attention_mask or use_causal_mask=True")
        if return_attention_scores:
            raise NotImplementedError("return_attention_scores is not supported by specc: a layer has one output")
        if value is None:  # the list form, as a spec's `inputs`: [query, value] or [query, value, key]
            if not isinstance(query, (list, tuple)):
                raise ValueError(f"MultiHeadAttention '{self.name}' needs a query and a value: mha(query, value)")
            items = list(query)
            roles = self._spec._roles or ("query", "value", "key")[: len(items)]
        else:
            named = {"query": query, "value": value, "key": key, "attention_mask": attention_mask}
            roles = tuple(r for r in named if r in ("query", "value") or named[r] is not None)
            items = [named[r] for r in roles]
        self._set_signature(tuple(roles), use_causal_mask)
        return super().__call__(items, training=training, **kwargs)

    def _set_signature(self, roles: tuple[str, ...], causal: bool | None) -> None:
        spec = self._spec
        called = bool(self._nodes) or bool(self._eager)
        if called and ((spec._roles or roles) != roles or (causal is not None and causal != spec.use_causal_mask)):
            raise ValueError(f"MultiHeadAttention '{self.name}' was first called with inputs {spec._roles} and "
                             f"use_causal_mask={spec.use_causal_mask}; specc keeps one call signature per layer, so "
                             f"use a new layer for inputs {roles}"
                             + ("" if causal is None else f" and use_causal_mask={causal}"))
        spec.set_input_roles(roles)
        if causal is not None:
            spec.use_causal_mask = bool(causal)
