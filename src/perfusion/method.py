"""The method's math: the gated rank-one edit of Perfusion (Tewel et al. 2023), one function per equation.

Symbols follow docs/method.md: ``e`` a token encoding, ``C`` the uncentered covariance of encodings,
``i*`` a concept's encoding, ``o*`` its target output, ``beta``/``tau`` the gate's bias and temperature.
Shapes: ``d`` the encoding width, ``N`` the number of concepts, ``k`` the rank of their span.
"""

from __future__ import annotations

import torch


def similarity_readout(concept_encodings: torch.Tensor, inverse_covariance: torch.Tensor) -> torch.Tensor:
    """Columns r_n with s_n(e) = r_n^T e; ``concept_encodings`` (N, d) -> (d, N)."""
    weighted = concept_encodings @ inverse_covariance  # i*_n^T C^-1, (N, d)
    norms = (weighted * concept_encodings).sum(-1, keepdim=True)  # i*_n^T C^-1 i*_n
    return (weighted / norms).T


def similarity(
    encodings: torch.Tensor, concept_encoding: torch.Tensor, inverse_covariance: torch.Tensor
) -> torch.Tensor:
    """s(e) = (i*^T C^-1 e) / (i*^T C^-1 i*) for every encoding in ``encodings`` (..., d)."""
    readout = similarity_readout(concept_encoding[None], inverse_covariance)[:, 0]
    return encodings @ readout.to(encodings.dtype)


def gate(similarities: torch.Tensor, beta: torch.Tensor | float, tau: torch.Tensor | float) -> torch.Tensor:
    """sigmoid((s(e) - beta) / tau): the run-time knob between concept (low beta) and prompt (high beta)."""
    return torch.sigmoid((similarities - beta) / tau)


def inverse_covariance_factor(inverse_covariance: torch.Tensor) -> torch.Tensor:
    """L with C^-1 = L L^T (Cholesky), in float64: computed once per base model."""
    return torch.linalg.cholesky(inverse_covariance.to(torch.float64))


def composition_basis(concept_encodings: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """A C^-1-orthonormal basis {u_n} of span{i*_n}: q = QR(L^T i*), u = L^-T q, with ``factor`` L (C^-1 = L L^T).

    ``concept_encodings`` (N, d) -> (N, d) with U C^-1 U^T = I. Computed in float64.
    """
    encodings = concept_encodings.to(torch.float64)
    lower = factor.to(torch.float64)
    q, _ = torch.linalg.qr(lower.T @ encodings.T)  # (d, N), orthonormal columns
    basis = torch.linalg.solve_triangular(lower.T, q, upper=True)  # u = L^-T q
    return basis.T


def rank_one_edit(
    projected: torch.Tensor,
    encodings: torch.Tensor,
    basis_readout: torch.Tensor,
    projected_basis: torch.Tensor,
    similarity_readouts: torch.Tensor,
    betas: torch.Tensor,
    taus: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """W' e = W (e - sum_n (u_n^T C^-1 e) u_n) + sum_n sigmoid((s_n(e) - beta_n) / tau_n) o*_n.

    Computed as a correction on top of ``projected`` = W e (so it composes with LoRA-wrapped layers):
    ``encodings`` (B, T, d); ``basis_readout`` (d, k) holds C^-1 u_n; ``projected_basis`` (out, k) holds W u_n;
    ``similarity_readouts`` (d, N); ``betas``/``taus`` (N,); ``targets`` (out, N) holds o*_n. Each row may have
    its own concepts: then every one of these carries a leading B, and ``betas``/``taus`` are (B, 1, N).
    """
    coefficients, gates = edit_readings(encodings, basis_readout, similarity_readouts, betas, taus)
    return corrected(projected, coefficients, gates, projected_basis, targets)


def edit_readings(encodings, basis_readout, similarity_readouts, betas, taus) -> tuple[torch.Tensor, torch.Tensor]:
    """(u_n^T C^-1 e, sigmoid((s_n(e) - beta_n) / tau_n)): what the edit reads off e, (B, T, k) and (B, T, N); the
    same for K and V."""
    encodings = encodings.to(basis_readout.dtype)
    return encodings @ basis_readout, gate(encodings @ similarity_readouts, betas, taus)


def scoped(coefficients: torch.Tensor, gates: torch.Tensor, scopes: torch.Tensor | None):
    """(r_t (u_k^T C^-1 e_t), r_t gate_n(e_t)), r_t = min_n m_tn: the edit only where every concept's scope allows it
    (m_tn in {0, 1}: concept n at position t; None: everywhere); elsewhere e_t keeps W e_t whole. (The removal of
    the joint span cannot be split per concept, so one concept out of scope turns the whole edit off there.)"""
    if scopes is None:
        return coefficients, gates
    allowed = scopes.amin(-1, keepdim=True)
    return coefficients * allowed.to(coefficients.dtype), gates * allowed.to(gates.dtype)


def corrected(projected, coefficients, gates, projected_basis, targets) -> torch.Tensor:
    """W e - sum_n (u_n^T C^-1 e) W u_n + sum_n gate_n o*_n, from ``projected`` = W e and the readings."""
    correction = gates @ targets.to(gates.dtype).transpose(-1, -2) - coefficients @ projected_basis.to(
        coefficients.dtype
    ).transpose(-1, -2)
    return projected + correction.to(projected.dtype)


def ema_update(concept_encoding: torch.Tensor, observed: torch.Tensor, decay: float) -> torch.Tensor:
    """i* <- decay * i* + (1 - decay) * e_concept (tracked, never trained)."""
    return decay * concept_encoding + (1.0 - decay) * observed


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(m (pred - target)^2) / (channels * sum(m)) per image, then the batch mean; ``mask`` (B, 1, h, w)."""
    mask = mask.to(prediction.dtype)
    squared = (prediction.float() - target.float()) ** 2 * mask
    per_image = squared.sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * prediction.shape[1])
    return per_image.mean()
