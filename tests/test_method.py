"""The equations of docs/method.md on random tensors (float64, so tolerances are round-off: 1e-9)."""

import torch

from perfusion.method import (
    composition_basis,
    ema_update,
    gate,
    inverse_covariance_factor,
    masked_mse,
    rank_one_edit,
    similarity,
    similarity_readout,
)

TOLERANCE = 1e-9


def random_problem(width=12, outputs=7, concepts=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(500, width, generator=generator, dtype=torch.float64)
    covariance = samples.T @ samples / 500
    weight = torch.randn(outputs, width, generator=generator, dtype=torch.float64)
    encodings = torch.randn(concepts, width, generator=generator, dtype=torch.float64)
    targets = torch.randn(outputs, concepts, generator=generator, dtype=torch.float64)
    return torch.linalg.inv(covariance), weight, encodings, targets


def edit(inverse, weight, encodings, targets, inputs, betas, taus):
    basis = composition_basis(encodings, inverse_covariance_factor(inverse))
    return rank_one_edit(
        inputs @ weight.T,
        inputs,
        (basis @ inverse).T,
        weight @ basis.T,
        similarity_readout(encodings, inverse),
        torch.tensor(betas, dtype=torch.float64),
        torch.tensor(taus, dtype=torch.float64),
        targets,
    )


def test_similarity_is_one_at_the_concept():
    inverse, _, encodings, _ = random_problem()
    assert abs(similarity(encodings[0], encodings[0], inverse).item() - 1.0) < TOLERANCE


def test_saturated_gate_maps_the_concept_to_its_target():
    inverse, weight, encodings, targets = random_problem(concepts=1)
    output = edit(inverse, weight, encodings, targets, encodings[None], [0.5], [1e-4])
    assert torch.allclose(output[0, 0], targets[:, 0], atol=TOLERANCE)


def test_single_concept_matches_the_written_formula():
    """W' e = W (e - s(e) i*) + sigmoid((s(e) - beta) / tau) o*, token by token."""
    inverse, weight, encodings, targets = random_problem(concepts=1)
    inputs = torch.randn(2, 5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    output = edit(inverse, weight, encodings, targets, inputs, [0.7], [0.15])
    s = similarity(inputs, encodings[0], inverse)
    expected = (inputs - s[..., None] * encodings[0]) @ weight.T + gate(s, 0.7, 0.15)[..., None] * targets[:, 0]
    assert torch.allclose(output, expected, atol=TOLERANCE)


def test_composition_basis_is_inverse_covariance_orthonormal_and_spans_the_concepts():
    inverse, _, encodings, _ = random_problem(concepts=3)
    basis = composition_basis(encodings, inverse_covariance_factor(inverse))
    assert torch.allclose(basis @ inverse @ basis.T, torch.eye(3, dtype=torch.float64), atol=TOLERANCE)
    coefficients = torch.linalg.lstsq(basis.T, encodings.T).solution  # each i* is a combination of the u
    assert torch.allclose(basis.T @ coefficients, encodings.T, atol=1e-8)


def test_composed_concepts_leave_each_other_unchanged():
    """With both loaded, each concept's own encoding still maps to exactly its own target (other gate closed)."""
    inverse, weight, encodings, targets = random_problem(concepts=2)
    s_cross = similarity_readout(encodings, inverse).T @ encodings.T  # s_m(i*_n)
    beta = float(s_cross.fill_diagonal_(0).abs().max()) + 0.05  # above every cross-similarity, below 1
    assert beta < 1
    together = edit(inverse, weight, encodings, targets, encodings[None], [beta, beta], [1e-4, 1e-4])
    for n in range(2):
        alone = edit(
            inverse, weight, encodings[n : n + 1], targets[:, n : n + 1], encodings[None, n : n + 1], [beta], [1e-4]
        )
        assert torch.allclose(together[0, n], alone[0, 0], atol=1e-8)
        assert torch.allclose(together[0, n], targets[:, n], atol=1e-8)


def test_lower_beta_opens_the_gate_monotonically():
    s = torch.tensor([0.3, 0.6, 0.9])
    gates = torch.stack([gate(s, beta, 0.15) for beta in (0.4, 0.5, 0.6, 0.7, 0.8)])
    assert (gates[:-1] >= gates[1:]).all()


def test_ema_update():
    assert torch.allclose(ema_update(torch.ones(3), torch.zeros(3), 0.99), torch.full((3,), 0.99))


def test_masked_mse_is_normalised_per_image():
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    uniform = torch.ones(2, 1, 8, 8)
    assert torch.allclose(masked_mse(prediction, target, uniform), ((prediction - target) ** 2).mean())
    mask = torch.rand(2, 1, 8, 8, generator=generator)
    scaled = mask * torch.tensor([3.0, 0.1]).view(2, 1, 1, 1)  # a per-image scale must not matter
    assert torch.allclose(masked_mse(prediction, target, mask), masked_mse(prediction, target, scaled))
    only_left = torch.zeros(2, 1, 8, 8)
    only_left[..., :4] = 1
    expected = ((prediction - target)[..., :4] ** 2).mean()
    assert torch.allclose(masked_mse(prediction, target, only_left), expected)


def test_the_edit_with_each_rows_own_concepts_equals_the_edit_row_by_row():
    """rank_one_edit with a leading row dimension on every concept tensor (a mixed batch) gives each row what its
    own call gives, to float32 rounding (1e-6)."""
    generator = torch.Generator().manual_seed(0)
    rows, length, width, out, count = 3, 5, 8, 6, 2
    inputs = [
        torch.randn(rows, length, width, generator=generator),
        torch.randn(rows, length, out, generator=generator),
    ]
    per_row = [
        torch.randn(rows, *shape, generator=generator)
        for shape in ((width, count), (out, count), (width, count), (out, count))
    ]
    betas, taus = (
        torch.rand(rows, 1, count, generator=generator),
        0.05 + torch.rand(rows, 1, count, generator=generator),
    )
    encodings, projected = inputs
    basis_readout, projected_basis, similarity_readouts, targets = per_row
    together = rank_one_edit(
        projected, encodings, basis_readout, projected_basis, similarity_readouts, betas, taus, targets
    )
    for row in range(rows):
        alone = rank_one_edit(
            projected[row : row + 1],
            encodings[row : row + 1],
            basis_readout[row],
            projected_basis[row],
            similarity_readouts[row],
            betas[row, 0],
            taus[row, 0],
            targets[row],
        )
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-6, rtol=1e-6)
