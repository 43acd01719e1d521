"""What the edit precomputes, and when it is stale.

Per base model, once: the Cholesky factor L of C^-1. Per set of concepts acting on a row: the C^-1-orthonormal basis
{u_n} of their encodings and its readouts (the *span plan*). Per layer and concept set: W_K u_n, W_V u_n and
o*_K = W_K i*_super (the *layer plan*). A concept's i* moving (every training step) drops the plans of the sets that
hold it and nothing else; gate settings are read live and drop nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perfusion.method import composition_basis, inverse_covariance_factor, similarity_readout


def linear_part(projection: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """W x for a projection that may carry a bias or a LoRA wrapper: f(x) - f(0), as (out, n) float32."""
    weight = next(projection.parameters())
    inputs = inputs.to(weight.device, weight.dtype)
    return (projection(inputs) - projection(torch.zeros_like(inputs[:1]))).float().T


@dataclass
class SpanPlan:
    basis: torch.Tensor  # u_n, (k, d) float64
    basis_readout: torch.Tensor  # C^-1 u_n, (d, k)
    similarity_readouts: torch.Tensor  # (d, N)


@dataclass
class LayerPlan:
    basis_readout: torch.Tensor
    similarity_readouts: torch.Tensor
    key_basis: torch.Tensor  # W_K u_n, (out, k)
    value_basis: torch.Tensor  # W_V u_n, (out, k)
    key_targets: torch.Tensor  # o*_K = W_K i*_super, (out, N)


class PlanCache:
    def __init__(self, inverse_covariance: torch.Tensor):
        self.inverse_covariance = inverse_covariance.to(torch.float64).cpu()
        self.factor = inverse_covariance_factor(self.inverse_covariance)  # once per base model
        self._spans: dict = {}
        self._layers: dict = {}
        self.generation = 0  # counts the drops: what was built from the plans is stale when it moved

    def drop(self, token: str) -> None:
        """Forget every plan of a concept set that holds ``token`` (its i* moved, or it was added or removed)."""
        for plans in (self._spans, self._layers):
            for key in [key for key in plans if token in key[0]]:
                del plans[key]
        self.generation += 1

    def clear_layers(self) -> None:
        self._layers.clear()
        self.generation += 1

    def span(self, tokens: tuple[str, ...], encodings, device) -> SpanPlan:
        """``encodings()``: the concepts' i* (N, d), in the order of ``tokens``; called only to build a plan."""
        key = (tokens, str(device))
        if key not in self._spans:
            encodings = encodings().detach().cpu().double()
            basis = composition_basis(encodings, self.factor)
            self._spans[key] = SpanPlan(
                basis=basis,
                basis_readout=(basis @ self.inverse_covariance).T.float().to(device),
                similarity_readouts=similarity_readout(encodings, self.inverse_covariance).float().to(device),
            )
        return self._spans[key]

    @torch.no_grad()
    def layer(self, tokens: tuple[str, ...], layer: str, attn, encodings, supercategory_encodings, device) -> LayerPlan:
        """``encodings()`` as for ``span``; ``supercategory_encodings()`` the concepts' i*_super (N, d)."""
        key = (tokens, layer, str(device))
        if key not in self._layers:
            span = self.span(tokens, encodings, device)
            self._layers[key] = LayerPlan(
                basis_readout=span.basis_readout,
                similarity_readouts=span.similarity_readouts,
                key_basis=linear_part(attn.to_k, span.basis),
                value_basis=linear_part(attn.to_v, span.basis),
                key_targets=linear_part(attn.to_k, supercategory_encodings()),
            )
        return self._layers[key]
