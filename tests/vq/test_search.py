"""vq.search.nearest_code: the tiled search returns exactly the brute-force argmin."""

from __future__ import annotations

import pytest
import torch

from vq.search import CPU_TILE_BYTES, DEFAULT_MAX_BYTES, nearest_code, tile_shape


def brute_force(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ||x - c_k||² from explicit differences in float64, first index on ties."""
    x, codebook = x.double(), codebook.double()
    step = max(1, 2**22 // codebook.numel())  # rows per chunk: <= 32 MiB of differences
    return torch.cat(
        [
            ((x[i : i + step, None, :] - codebook) ** 2).sum(dim=2).argmin(dim=1)  # (step, K)
            for i in range(0, x.shape[0], step)
        ]
    )  # (N,)


def integer_data(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Small-integer vectors: every distance is exact in float32 and ties are frequent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (n, d), generator=g).float()
    codebook = torch.randint(-3, 4, (k, d), generator=g).float()
    return x, codebook


@pytest.mark.parametrize(
    ("n", "k", "d"),
    [(1, 1, 1), (7, 5, 3), (33, 1, 4), (1, 97, 5), (130, 1000, 16), (600, 1500, 8), (70, 2048, 64)],
)
@pytest.mark.parametrize("max_bytes", [100, 4096, DEFAULT_MAX_BYTES])
def test_same_ids_as_brute_force(n: int, k: int, d: int, max_bytes: int) -> None:
    x, codebook = integer_data(n, k, d, seed=n + k + d)
    ids = nearest_code(x, codebook, max_bytes=max_bytes)
    assert ids.dtype == torch.int64 and ids.shape == (n,)
    assert torch.equal(ids, brute_force(x, codebook))


@pytest.mark.parametrize(("n", "k", "d"), [(7, 5, 3), (1, 97, 5), (20, 70, 3)])
@pytest.mark.parametrize("max_bytes", [1, 4, 12])
def test_one_element_tiles(n: int, k: int, d: int, max_bytes: int) -> None:
    # A bound below one float still makes progress with 1 x 1 (or 1 x 3) tiles.
    x, codebook = integer_data(n, k, d, seed=n * k)
    assert torch.equal(nearest_code(x, codebook, max_bytes=max_bytes), brute_force(x, codebook))


@pytest.mark.parametrize("max_bytes", [256, 10_000, DEFAULT_MAX_BYTES])
def test_float_data_picks_a_nearest_code(max_bytes: int) -> None:
    # Float rounding may swap codes whose distances differ by ~1e-6; the picked code must
    # still be nearest up to that rounding, and almost every id must agree exactly.
    g = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(300, 32, generator=g), torch.randn(1100, 32, generator=g)
    ids = nearest_code(x, codebook, max_bytes=max_bytes)
    dist = torch.cdist(x.double(), codebook.double()) ** 2  # (N, K), test-only reference
    picked = dist.gather(1, ids[:, None])[:, 0]
    assert torch.all(picked <= dist.min(dim=1).values + 1e-4)
    assert (ids == dist.argmin(dim=1)).float().mean() >= 0.99


@pytest.mark.parametrize("max_bytes", [64, 4096, DEFAULT_MAX_BYTES])
def test_ties_go_to_the_lowest_index_across_tiles(max_bytes: int) -> None:
    x, base = integer_data(50, 700, 6, seed=1)
    codebook = torch.cat([base, base, base])  # every code appears 3 times, 700 apart
    ids = nearest_code(x, codebook, max_bytes=max_bytes)
    assert torch.all(ids < 700)
    assert torch.equal(ids, brute_force(x, base))


def test_all_codes_equal_gives_zero() -> None:
    codebook = torch.ones(2048, 8)
    assert torch.all(nearest_code(torch.randn(40, 8), codebook) == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_under_autocast_searches_in_float32(dtype: torch.dtype) -> None:
    x, codebook = integer_data(64, 1030, 16, seed=2)
    # ±3 integers are exact in bf16/fp16, so the reference on float32 copies is the truth.
    expected = brute_force(x, codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = nearest_code(x.to(dtype), codebook.to(dtype), max_bytes=4096)
    assert torch.equal(ids, expected)


def test_autocast_does_not_lower_the_matmul_precision() -> None:
    # bf16 (8 mantissa bits) rounds 1.003 and 1.004 to 1.0, which would tie the two code
    # values and return id 0; float32 separates them. 32 copies of each exercise the grouped
    # reduction; the first copy of the nearer value (id 32) must win.
    codebook = torch.tensor([[1.0]] * 32 + [[1.004]] * 32)  # (64, 1)
    x = torch.full((8, 1), 1.003)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = nearest_code(x, codebook)
    assert torch.all(ids == 32)


def test_no_grad_and_empty_input() -> None:
    codebook = torch.randn(10, 3, requires_grad=True)
    ids = nearest_code(torch.randn(5, 3, requires_grad=True), codebook)
    assert not ids.requires_grad
    empty = nearest_code(torch.empty(0, 3), codebook)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_non_contiguous_input() -> None:
    x, codebook = integer_data(40, 600, 8, seed=4)
    ids = nearest_code(x.t().contiguous().t(), codebook.t().contiguous().t(), max_bytes=1000)
    assert torch.equal(ids, brute_force(x, codebook))


@pytest.mark.parametrize("n", [1, 100, 16384])
@pytest.mark.parametrize("k", [1, 33, 1024, 262_144])
@pytest.mark.parametrize("max_bytes", [1, 4, 1000, DEFAULT_MAX_BYTES])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_tile_respects_the_memory_bound(n: int, k: int, max_bytes: int, device_type: str) -> None:
    rows, codes = tile_shape(n, k, max_bytes, device_type)
    assert 1 <= rows <= n and 1 <= codes <= k
    assert rows * codes * 4 <= max(max_bytes, 4)
    if device_type == "cpu":
        assert rows * codes * 4 <= CPU_TILE_BYTES


@pytest.mark.parametrize(
    ("x", "codebook", "kwargs", "message"),
    [
        (
            torch.zeros(4),
            torch.zeros(3, 4),
            {},
            r"x must be a 2-D tensor of shape \(N, D\), got \(4,\)",
        ),
        (torch.zeros(1, 2, 4), torch.zeros(3, 4), {}, r"x must be a 2-D tensor"),
        (torch.zeros(2, 4), torch.zeros(4), {}, r"codebook must be a 2-D tensor of shape \(K, D\)"),
        (
            torch.zeros(2, 4),
            torch.zeros(3, 5),
            {},
            r"must share D, got x \(2, 4\) and codebook \(3, 5\)",
        ),
        (torch.zeros(2, 4), torch.zeros(0, 4), {}, r"at least one code"),
        (
            torch.zeros(2, 4),
            torch.zeros(3, 4),
            {"max_bytes": 0},
            r"max_bytes must be a positive int, got 0",
        ),
        (torch.zeros(2, 4), torch.zeros(3, 4), {"max_bytes": -5}, r"got -5"),
        (torch.zeros(2, 4), torch.zeros(3, 4), {"max_bytes": 1.5}, r"got 1.5"),
        (torch.zeros(2, 4), torch.zeros(3, 4), {"max_bytes": True}, r"got True"),
        ([[0.0]], torch.zeros(3, 1), {}, r"x must be a 2-D tensor .* got list"),
    ],
)
def test_bad_input_raises_value_error(
    x: object, codebook: torch.Tensor, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        nearest_code(x, codebook, **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x, codebook = integer_data(3000, 5000, 64, seed=5)
    expected = nearest_code(x, codebook)
    for max_bytes in (4096, DEFAULT_MAX_BYTES):
        ids = nearest_code(x.cuda(), codebook.cuda(), max_bytes=max_bytes)
        assert ids.device.type == "cuda"
        assert torch.equal(ids.cpu(), expected)
