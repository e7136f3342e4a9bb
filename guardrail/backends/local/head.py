"""The output layer computed only for the tokens a row's grammar allows.

A constrained row can only take the tokens its grammar allows: at a brace, a comma or inside a
value held to spans of the input, a few dozen out of a vocabulary of 49k (SmolLM2) or 262k
(Gemma 3). The model's last layer (hidden state times the embedding matrix) costs as much as
the rest of a small model's step for a large vocabulary: for Gemma 3 270M, 168M of its
multiply-adds per token against about 100M for all its transformer layers. So the decode loop
asks the model for its last hidden state and computes the scores of the allowed tokens only;
the others are -inf, which is what the grammar mask makes of them anyway. The constrained
distribution (masked softmax), the greedy choice and the seeded draws are those of the full
layer; the rows whose grammar allows much (inside a free string) get the full layer.

It is used only where the output layer is a plain linear map of the final hidden state: a
model that scales or caps its logits (``final_logit_softcapping``, ``logit_scale``...) or whose
decoder cannot be called on its own keeps the full layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["MIN_VOCABULARY", "SparseHead"]

#: Below this vocabulary size the full layer is cheap next to the rest of the step.
MIN_VOCABULARY = 32_000
#: A row allowing more than this share of the vocabulary gets the full layer (one matrix product
#: for all such rows beats gathering most of the matrix row by row).
DENSE_SHARE = 1 / 8
_SCALING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class SparseHead:
    """A model's decoder and output matrix, to score chosen tokens from the last hidden state."""

    def __init__(self, decoder: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.decoder = decoder
        self.weight = weight
        self.bias = bias
        self.vocabulary = int(weight.shape[0])
        parameters = inspect.signature(decoder.forward).parameters
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"

    @classmethod
    def of(cls, model: Any, *, min_vocabulary: int = MIN_VOCABULARY) -> SparseHead | None:
        """The sparse head of ``model``, or ``None`` where the full layer must be used."""
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _SCALING):
            return None
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        if type(output) is not torch.nn.Linear or decoder is None or decoder is model:
            return None
        if output.weight.shape[0] < min_vocabulary:
            return None
        return cls(decoder, output.weight, output.bias)

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """One forward pass of the decoder; the final hidden state of each row's last position."""
        out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           **{self.cache_arg: cache})
        return out.last_hidden_state[:, -1, :]

    def scores(self, hidden: torch.Tensor, allowed: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``[rows, vocabulary]`` scores: each row's allowed tokens (``None``: every token) scored,
        the others -inf."""
        with torch.no_grad():  # not inference_mode: the repetition penalty then edits the scores in place
            return self._scores(hidden, allowed)

    def _scores(self, hidden: torch.Tensor, allowed: Sequence[torch.Tensor | None]) -> torch.Tensor:
        out = torch.full((hidden.shape[0], self.vocabulary), float("-inf"), dtype=hidden.dtype, device=hidden.device)
        limit = self.vocabulary * DENSE_SHARE
        dense: list[int] = []
        for i, ids in enumerate(allowed):
            if ids is None or len(ids) > limit:
                dense.append(i)
            elif len(ids):
                bias = self.bias[ids] if self.bias is not None else None
                out[i, ids] = torch.nn.functional.linear(hidden[i], self.weight[ids], bias)
        if dense:
            out[dense] = torch.nn.functional.linear(hidden[dense], self.weight, self.bias)
        return out
