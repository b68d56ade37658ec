"""Agreement with vector_quantize_pytorch (the field's reference library, a dev dependency)."""

from __future__ import annotations

import pytest
import torch

from vq import FSQ, VectorQuantizer
from vq import functional as VF

vqp = pytest.importorskip("vector_quantize_pytorch")
from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to as ref_rotate_to  # noqa: E402


@pytest.mark.parametrize("d", [2, 8, 64])
def test_rotation_output_and_gradient_match_reference(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    e = torch.randn(256, d, generator=g, dtype=torch.float64)
    q = torch.randn(256, d, generator=g, dtype=torch.float64) * 0.5
    upstream = torch.randn(256, d, generator=g, dtype=torch.float64)

    ours_e = e.clone().requires_grad_(True)
    ours = VF.rotate_to(ours_e, q)
    ours.backward(upstream)

    ref_e = e.clone().requires_grad_(True)
    ref = ref_rotate_to(ref_e, q)
    ref.backward(upstream)

    torch.testing.assert_close(ours.detach(), ref.detach())
    torch.testing.assert_close(ours_e.grad, ref_e.grad)


@pytest.mark.parametrize("levels", [[8, 6, 5], [8, 5, 5, 5], [7, 5, 5, 5, 5], [8, 8, 8, 5, 5, 5]])
def test_fsq_ids_and_codes_agree_with_reference(levels: list[int]) -> None:
    torch.manual_seed(0)
    ours = FSQ(levels)
    ref = vqp.FSQ(levels=levels)
    assert ours.codebook_size == ref.codebook_size
    z = torch.randn(4, len(levels), 32, 32) * 2  # (B, d, H, W), 4096 vectors
    out = ours(z)
    ref_codes, ref_ids = ref(z)  # 4-d input: the reference also treats it as channel-first
    agree = (out.indices == ref_ids.long()).float().mean().item()
    assert agree >= 0.99
    same = out.indices == ref_ids.long()
    torch.testing.assert_close(out.quantized.movedim(1, -1)[same], ref_codes.movedim(1, -1)[same])
    # Both decode ids the same way (same mixed-radix order and code values).
    ids = torch.arange(ours.codebook_size)
    torch.testing.assert_close(ours.decode(ids[:, None])[..., 0], ref.indices_to_codes(ids))


def test_vq_nearest_code_ids_agree_with_reference() -> None:
    torch.manual_seed(0)
    dim, k = 16, 256
    ref = vqp.VectorQuantize(
        dim=dim, codebook_size=k, rotation_trick=False, learnable_codebook=True, ema_update=False
    )
    ours = VectorQuantizer(dim, k)
    with torch.no_grad():
        ours.book.codebook.copy_(ref.codebook)
    ref.eval()
    ours.eval()
    x = torch.randn(2, 64, dim)  # reference: (B, N, D) channel-last
    _, ref_ids, _ = ref(x)
    out = ours(x.movedim(-1, 1))
    assert torch.equal(out.indices, ref_ids)
