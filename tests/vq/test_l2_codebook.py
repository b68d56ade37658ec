"""The l2-normalised codebook (``codebook_norm="l2"``): artifacts written before it became a
codebook component load and compute as they did, and the module follows the paper's formula.

``tests/fixtures/l2_artifact/`` (config.json + model.safetensors) and
``l2_artifact_expected.safetensors`` were written by the code before the refactor (commit
637a17d, ``vq.normalized.L2NormVectorQuantizer``): ``torch.manual_seed(0)``, the config in the
artifact, the codebook at construction (``init_codebook``), five Adam steps (lr 0.05) on random
images so the stored rows are far from unit norm, ``vq.save_tokenizer``; then the tokenizer's
codes and images of ``images``, and the quantizer's training-mode output and gradients on
``z`` with the downstream loss ``sum(quantized * w) + loss``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

import vq
from vq.pixels import uint8_to_float

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ARTIFACT = FIXTURES / "l2_artifact"


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(FIXTURES / "l2_artifact_expected.safetensors")


@pytest.fixture
def tok() -> vq.Tokenizer:
    return vq.load_tokenizer(ARTIFACT, precision="fp32")


def test_an_old_l2_artifact_loads_with_the_same_tensor_names_and_values(tok: vq.Tokenizer) -> None:
    saved = safetensors.torch.load_file(ARTIFACT / "model.safetensors")
    state = tok.model.state_dict()
    assert sorted(state) == sorted(saved)
    assert "quantizer.codebook" in state
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert tok.config.quantizer.codebook_norm == "l2"


def test_an_old_l2_artifact_gives_the_same_codes_and_images(
    tok: vq.Tokenizer, expected: dict[str, torch.Tensor]
) -> None:
    codes = tok.encode(expected["images"])
    assert torch.equal(codes, expected["codes"])
    assert torch.equal(tok.decode(codes), expected["decoded"])
    with torch.no_grad():
        torch.testing.assert_close(tok.model.decode(codes), expected["decoded_float"])
        recon = tok.model(uint8_to_float(expected["images"])).recon
    torch.testing.assert_close(recon, expected["recon"])


def test_the_l2_quantizer_trains_as_before(
    tok: vq.Tokenizer, expected: dict[str, torch.Tensor]
) -> None:
    q = tok.model.quantizer.train()
    (table,) = q.parameters()  # the stored (K, D) rows, the only learned tensor
    z = expected["z"].clone().requires_grad_(True)
    out = q(z)
    ((out.quantized * expected["w"]).sum() + out.loss).backward()
    assert torch.equal(out.indices, expected["train_indices"])
    torch.testing.assert_close(out.quantized, expected["train_quantized"])
    torch.testing.assert_close(out.loss, expected["train_loss"])
    torch.testing.assert_close(z.grad, expected["grad_z"])
    torch.testing.assert_close(table.grad, expected["grad_codebook"])
    q.eval()
    with torch.no_grad():
        out = q(z)
    assert torch.equal(out.indices, expected["eval_indices"])
    torch.testing.assert_close(out.quantized, expected["eval_quantized"])
    torch.testing.assert_close(q.decode(out.indices), expected["decode"])
    torch.testing.assert_close(q.get_codebook(), expected["get_codebook"])


def test_a_seeded_l2_model_starts_from_the_same_codebook(
    tok: vq.Tokenizer, expected: dict[str, torch.Tensor]
) -> None:
    torch.manual_seed(0)
    model = vq.VQVAE(tok.config)
    assert torch.equal(model.state_dict()["quantizer.codebook"], expected["init_codebook"])


# --- the formula --------------------------------------------------------------------------


def cosine_vq_reference(
    rows: torch.Tensor, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ViT-VQGAN §3.2 written out: unit encoder rows ê, unit codes ĉ, the code of highest
    cosine similarity. (N, D), (K, D) -> ê (N, D), ids (N,), q = ĉ[ids] (N, D)."""
    e = rows / rows.norm(dim=1, keepdim=True)
    c = table / table.norm(dim=1, keepdim=True)
    ids = (e @ c.T).argmax(dim=1)
    return e, ids, c[ids]


@pytest.mark.parametrize("update", ["gradient", "ema"])
@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_the_l2_codebook_quantizes_by_cosine_similarity(update: str, estimator: str) -> None:
    torch.manual_seed(0)
    beta = 0.5
    quantizer = vq.VectorQuantizer(
        6,
        40,
        codebook_norm="l2",
        codebook_update=update,
        grad_estimator=estimator,
        codebook_init="kaiming",
        beta=beta,
    )
    table = quantizer.state_dict()["codebook"].clone()
    z = torch.randn(2, 6, 3, 7) * torch.rand(2, 1, 3, 7) * 10  # rows of very different norms
    out = quantizer(z)
    rows = z.movedim(1, -1).reshape(-1, 6)
    e, ids, q = cosine_vq_reference(rows, table)
    assert torch.equal(out.indices.reshape(-1), ids)
    torch.testing.assert_close(out.quantized.movedim(1, -1).reshape(-1, 6), q)
    # ||sg(ê) - q||² + β ||ê - sg(q)||² on unit vectors; the EMA keeps the commitment term only.
    weight = beta if update == "ema" else 1.0 + beta
    torch.testing.assert_close(out.loss, weight * ((e - q) ** 2).mean())
    # Eval mode: decode gives the unit codes, and neither the encoder rows' nor the stored
    # rows' norms change a code.
    quantizer.eval()
    out = quantizer(z)
    torch.testing.assert_close(quantizer.decode(out.indices), out.quantized)
    torch.testing.assert_close(out.quantized.norm(dim=1), torch.ones(2, 3, 7))
    with torch.no_grad():
        quantizer.book.codebook.mul_(torch.rand(40, 1) * 5 + 0.1)
    assert torch.equal(quantizer(z * torch.rand(2, 1, 3, 7) * 3).indices, out.indices)


def test_an_l2_ema_step_averages_unit_rows_and_normalises_the_codes() -> None:
    """One EMA step as vector_quantize_pytorch's CosineSimCodebook (the rotation-trick paper's
    VQ-VAE) takes it: counts and sums of the *unit* encoder rows, codes l2-normalised."""
    torch.manual_seed(1)
    decay, eps, k = 0.8, 1e-5, 16
    quantizer = vq.VectorQuantizer(
        6, k, codebook_norm="l2", codebook_update="ema", ema_decay=decay, ema_eps=eps
    )
    count0, sum0 = quantizer.book.ema_count.clone(), quantizer.book.ema_sum.clone()
    z = torch.randn(4, 6, 5) * 3
    out = quantizer(z)
    e, ids, _ = cosine_vq_reference(z.movedim(1, -1).reshape(-1, 6), sum0 / count0[:, None])
    assert torch.equal(out.indices.reshape(-1), ids)
    count = decay * count0 + (1 - decay) * torch.bincount(ids, minlength=k)
    sums = decay * sum0 + (1 - decay) * torch.zeros(k, 6).index_add_(0, ids, e)
    smoothed = (count + eps) / (count.sum() + k * eps) * count.sum()
    means = sums / smoothed[:, None]
    torch.testing.assert_close(quantizer.get_codebook(), means / means.norm(dim=1, keepdim=True))


def test_data_init_and_restarts_of_the_l2_codebook_copy_unit_encoder_rows() -> None:
    torch.manual_seed(2)
    quantizer = vq.VectorQuantizer(6, 8, codebook_norm="l2", codebook_init="data")
    z = torch.randn(1, 6, 30) * 4 + 1
    quantizer(z)
    unit = torch.nn.functional.normalize(z.movedim(1, -1).reshape(-1, 6), dim=1)
    stored = quantizer.state_dict()["codebook"]
    assert ((stored[:, None, :] == unit[None]).all(dim=-1)).any(dim=1).all()
    torch.testing.assert_close(stored.norm(dim=1), torch.ones(8))


def test_kaiming_init_draws_codes_at_unit_variance_scale() -> None:
    """He et al. 2015: uniform(±sqrt(6/D)) for a (K, D) table, entries of variance 2/D, so a
    row has squared norm 2 on average, where uniform(±1/K) gives ~D/(3K²)."""
    torch.manual_seed(3)
    d, k = 32, 4096
    table = vq.VectorQuantizer(d, k, codebook_init="kaiming").state_dict()["codebook"]
    assert float(table.abs().max()) <= (6 / d) ** 0.5
    assert float(table.var()) == pytest.approx(2 / d, rel=0.05)
    assert float((table**2).sum(dim=1).mean()) == pytest.approx(2.0, rel=0.05)
    l2 = vq.VectorQuantizer(d, k, codebook_norm="l2", codebook_init="kaiming")
    torch.testing.assert_close(l2.get_codebook().norm(dim=1), torch.ones(k))
