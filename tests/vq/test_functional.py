"""Properties of the pure math in vq.functional."""

from __future__ import annotations

import itertools

import pytest
import torch

from vq import functional as VF


def _pair(n: int = 16, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    q = torch.randn(n, d, generator=g, dtype=torch.float64) * 2.0
    return e, q


def _explicit_rotation(e: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R (N, D, D) and λ (N,) built densely from the paper's definition (§4.2)."""
    e_hat = e / e.norm(dim=1, keepdim=True)
    q_hat = q / q.norm(dim=1, keepdim=True)
    r = (e_hat + q_hat) / (e_hat + q_hat).norm(dim=1, keepdim=True)
    eye = torch.eye(e.shape[1], dtype=e.dtype).expand(e.shape[0], -1, -1)
    rot = eye - 2 * r[:, :, None] * r[:, None, :] + 2 * q_hat[:, :, None] * e_hat[:, None, :]
    lam = q.norm(dim=1) / e.norm(dim=1)
    return rot, lam


# --- straight-through ----------------------------------------------------------------------


def test_ste_value_is_q_and_gradient_is_identity() -> None:
    e, q = _pair()
    e.requires_grad_(True)
    q.requires_grad_(True)
    out = VF.ste(e, q)
    assert torch.equal(out, q)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(e.grad, g)
    assert q.grad is None


# --- rotation trick ------------------------------------------------------------------------


def test_rotation_forward_value_is_q() -> None:
    e, q = _pair()
    out = VF.rotate_to(e.requires_grad_(True), q)
    assert torch.equal(out.detach(), q)


def test_rotation_jacobian_is_lambda_times_a_rotation_of_e_onto_q() -> None:
    # rotate_to's Jacobian with respect to e is λR: (λR) e = q and Rᵀ R = I, so the
    # gradient λ Rᵀ g is g rotated back and scaled by λ = |q| / |e|.
    e, q = _pair(n=4, d=6, seed=2)
    for row in range(e.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda x, r=row: VF.rotate_to(x[None], q[r][None])[0], e[row]
        )  # (D, D)
        torch.testing.assert_close(jac @ e[row], q[row])
        lam = q[row].norm() / e[row].norm()
        eye = torch.eye(e.shape[1], dtype=e.dtype)
        torch.testing.assert_close(jac.T @ jac, lam**2 * eye)
        assert torch.linalg.det(jac / lam) == pytest.approx(1.0)  # a rotation, not a reflection


def test_rotation_gradient_is_lambda_R_transpose_g() -> None:
    e, q = _pair()
    e.requires_grad_(True)
    g = torch.randn_like(q)
    VF.rotate_to(e, q).backward(g)
    rot, lam = _explicit_rotation(e.detach(), q)
    expected = lam[:, None] * (rot.transpose(1, 2) @ g[:, :, None]).squeeze(-1)
    torch.testing.assert_close(e.grad, expected)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return torch.arccos(cos.clamp(-1, 1))


def test_rotation_preserves_angle_and_scales_norm() -> None:
    e, q = _pair(n=64, d=16, seed=3)
    e.requires_grad_(True)
    g = torch.randn_like(q)
    VF.rotate_to(e, q).backward(g)
    grad = e.grad
    torch.testing.assert_close(_angle(e.detach(), grad), _angle(q, g))
    lam = q.norm(dim=1) / e.detach().norm(dim=1)
    torch.testing.assert_close(grad.norm(dim=1), lam * g.norm(dim=1))


def test_rotation_no_gradient_to_q() -> None:
    e, q = _pair()
    q.requires_grad_(True)
    VF.rotate_to(e.requires_grad_(True), q).sum().backward()
    assert q.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["e_zero", "e_tiny", "q_zero", "antipodal", "near_antipodal"])
def test_rotation_degenerate_inputs_give_finite_gradients(case: str, dtype: torch.dtype) -> None:
    e, q = _pair(n=8, d=4)
    e, q = e.to(dtype), q.to(dtype)
    if case == "e_zero":
        e = torch.zeros_like(e)
    elif case == "e_tiny":
        e = e * 1e-12
    elif case == "q_zero":
        q = torch.zeros_like(q)
    elif case == "antipodal":
        e = -0.5 * q
    else:
        e = -0.5 * q + 1e-9 * torch.randn_like(q)
    e.requires_grad_(True)
    g = torch.randn_like(q)
    out = VF.rotate_to(e, q)
    out.backward(g)
    assert torch.equal(out.detach(), q)
    assert torch.isfinite(e.grad).all()
    if case in ("e_zero", "e_tiny", "q_zero"):
        # Falls back to straight-through.
        torch.testing.assert_close(e.grad, g)
    if case == "antipodal":
        # R = I - 2êêᵀ is orthogonal: the norm is still scaled by exactly λ.
        lam = q.norm(dim=1) / e.detach().norm(dim=1)
        torch.testing.assert_close(e.grad.norm(dim=1), lam * g.norm(dim=1))


# --- VQ loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.25, 1.0])
def test_vq_loss_value_and_gradients(beta: float) -> None:
    e, q = _pair()
    e.requires_grad_(True)
    q.requires_grad_(True)
    loss = VF.vq_loss(e, q, beta)
    mse = ((e - q) ** 2).mean()
    torch.testing.assert_close(loss, (1 + beta) * mse)
    loss.backward()
    diff = (e - q).detach() * 2 / e.numel()
    torch.testing.assert_close(q.grad, -diff)  # codebook term only, never scaled by β
    torch.testing.assert_close(e.grad, beta * diff)  # commitment term, weighted by β


# --- FSQ helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 5, 5, 5, 5], [2, 3, 4], [8, 6, 5]])
def test_fsq_bound_round_gives_exactly_L_values(levels: list[int]) -> None:
    lv = torch.tensor(levels)
    z = torch.linspace(-20, 20, 20001)[:, None].expand(-1, len(levels))
    codes, level_ids = VF.fsq_quantize(z, lv)
    for i, n in enumerate(levels):
        assert sorted(level_ids[:, i].unique().tolist()) == list(range(n))
        assert codes[:, i].min() >= -1 and codes[:, i].max() <= 1
    # z = 0 maps to the code 0 (the shift centres the bound).
    zero_codes, _ = VF.fsq_quantize(torch.zeros(1, len(levels)), lv)
    assert torch.equal(zero_codes, torch.zeros_like(zero_codes))


def test_fsq_index_round_trip_whole_codebook() -> None:
    levels = [8, 5, 5, 5]
    lv = torch.tensor(levels)
    basis = VF.fsq_basis(levels)
    assert basis.tolist() == [1, 8, 40, 200]
    ids = torch.arange(int(lv.prod()))
    level_ids = VF.fsq_index_to_levels(ids, lv, basis)
    assert torch.equal(VF.fsq_levels_to_index(level_ids, basis), ids)
    # Every combination of levels appears exactly once.
    combos = set(map(tuple, level_ids.tolist()))
    assert combos == set(itertools.product(*[range(n) for n in levels]))


def test_fsq_quantize_codes_match_level_ids_and_ste_gradient() -> None:
    lv = torch.tensor([8, 5, 3])
    z = torch.randn(100, 3, requires_grad=True)
    codes, level_ids = VF.fsq_quantize(z, lv)
    assert torch.equal(codes.detach(), VF.fsq_levels_to_codes(level_ids, lv))
    codes.sum().backward()
    # Gradient of bound(z)/(L//2): tanh' > 0 everywhere, never zero as with plain rounding.
    zz = z.detach().clone().requires_grad_(True)
    (VF.fsq_bound(zz, lv) / (lv // 2)).sum().backward()
    torch.testing.assert_close(z.grad, zz.grad)
    assert (z.grad > 0).all()


# --- EMA -----------------------------------------------------------------------------------


def test_ema_update_formula() -> None:
    counts = torch.tensor([1.0, 2.0, 0.5])
    sums = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    e = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 4.0]])
    idx = torch.tensor([0, 0, 2])
    n, s = VF.assignment_stats(e, idx, 3)
    assert n.tolist() == [2.0, 0.0, 1.0]
    assert s.tolist() == [[4.0, 2.0], [0.0, 0.0], [0.0, 4.0]]
    new_counts, new_sums = VF.ema(counts, n, 0.9), VF.ema(sums, s, 0.9)
    torch.testing.assert_close(new_counts, torch.tensor([0.9 + 0.2, 1.8, 0.45 + 0.1]))
    torch.testing.assert_close(
        new_sums, torch.tensor([[0.9 + 0.4, 0.2], [0.0, 1.8], [0.9, 0.9 + 0.4]])
    )


def test_laplace_smoothing_keeps_total_and_positivity() -> None:
    counts = torch.tensor([0.0, 3.0, 1.0, 0.0])
    smoothed = VF.laplace_smooth(counts, eps=1e-2)
    torch.testing.assert_close(smoothed.sum(), counts.sum())
    assert (smoothed > 0).all()
    expected = (counts + 1e-2) / (4 + 4 * 1e-2) * 4
    torch.testing.assert_close(smoothed, expected)
    sums = torch.randn(4, 3)
    torch.testing.assert_close(VF.ema_codebook(counts, sums, 1e-2), sums / expected[:, None])
