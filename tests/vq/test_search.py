"""vq.search.nearest_code: the tiled search returns exactly the brute-force argmin, on both
routes (plain float32 tiles, and bf16 candidates re-ranked in float32)."""

from __future__ import annotations

import pytest
import torch

from vq import search
from vq.search import CPU_TILE_BYTES, DEFAULT_MAX_BYTES, nearest_code, tile_shape

ROUTES = pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-candidates"])


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
@ROUTES
def test_same_ids_as_brute_force(n: int, k: int, d: int, max_bytes: int, bf16: bool) -> None:
    x, codebook = integer_data(n, k, d, seed=n + k + d)
    ids = nearest_code(x, codebook, max_bytes=max_bytes, bf16_candidates=bf16)
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
@ROUTES
def test_ties_go_to_the_lowest_index_across_tiles(max_bytes: int, bf16: bool) -> None:
    x, base = integer_data(50, 700, 6, seed=1)
    codebook = torch.cat([base, base, base])  # every code appears 3 times, 700 apart
    ids = nearest_code(x, codebook, max_bytes=max_bytes, bf16_candidates=bf16)
    assert torch.all(ids < 700)
    assert torch.equal(ids, brute_force(x, base))


@ROUTES
def test_all_codes_equal_gives_zero(bf16: bool) -> None:
    codebook = torch.ones(2048, 8)
    assert torch.all(nearest_code(torch.randn(40, 8), codebook, bf16_candidates=bf16) == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_under_autocast_searches_in_float32(dtype: torch.dtype) -> None:
    x, codebook = integer_data(64, 1030, 16, seed=2)
    # ±3 integers are exact in bf16/fp16, so the reference on float32 copies is the truth.
    expected = brute_force(x, codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = nearest_code(x.to(dtype), codebook.to(dtype), max_bytes=4096)
    assert torch.equal(ids, expected)


@ROUTES
def test_autocast_does_not_lower_the_matmul_precision(bf16: bool) -> None:
    # bf16 (8 mantissa bits) rounds 1.003 and 1.004 to 1.0, which would tie the two code
    # values and return id 0; float32 separates them. 32 copies of each exercise the grouped
    # reduction; the first copy of the nearer value (id 32) must win.
    codebook = torch.tensor([[1.0]] * 32 + [[1.004]] * 32)  # (64, 1)
    x = torch.full((8, 1), 1.003)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = nearest_code(x, codebook, bf16_candidates=bf16)
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


# --- the bf16 candidate route on adversarial inputs ------------------------------------------


def _fp32_search(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return nearest_code(x, codebook, bf16_candidates=False)


@pytest.mark.parametrize(("n", "k", "d"), [(500, 1024, 64), (300, 4100, 32), (64, 17, 3)])
def test_bf16_route_equals_float32_on_float_data(n: int, k: int, d: int) -> None:
    g = torch.Generator().manual_seed(k)
    x, codebook = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g) * 0.5
    assert torch.equal(nearest_code(x, codebook, bf16_candidates=True), _fp32_search(x, codebook))


def test_codes_that_bf16_cannot_tell_apart_are_separated() -> None:
    # Integers in [-300, 300] with D = 16: every float32 distance is exact, but bf16 keeps 8
    # significant bits, so 257 and 256 (or 301 and 300) round alike. Each base code gets a
    # twin differing by 1 in one large coordinate; the nearer of the two must win.
    g = torch.Generator().manual_seed(7)
    base = torch.randint(-300, 301, (600, 16), generator=g).float()
    base[:, 0] = 257.0
    twin = base.clone()
    twin[:, 0] = 256.0
    codebook = torch.cat([base, twin])  # (1200, 16)
    x = base[torch.randint(0, 600, (400,), generator=g)] + torch.randint(
        -2, 3, (400, 16), generator=g
    )
    x[:, 0] = torch.where(torch.rand(400, generator=g) < 0.5, 256.0, 257.0)
    expected = brute_force(x, codebook)
    assert torch.equal(nearest_code(x, codebook, bf16_candidates=True), expected)
    assert torch.equal(_fp32_search(x, codebook), expected)


def test_near_ties_below_bf16_resolution() -> None:
    # Two codes whose squared distances differ by 5e-4 (2e-3 relative): far inside the bf16
    # error bound (~1 here), far outside float32's rounding of ||c||² - 2 x·c (~1e-5).
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 32, generator=g)
    direction = torch.nn.functional.normalize(torch.randn(256, 32, generator=g), dim=1)
    near = x + 0.5 * direction
    far = x + 0.5 * (1 + 1e-3) * direction
    filler = torch.randn(2000, 32, generator=g) * 3 + 10  # far from every x
    codebook = torch.cat([filler, far, near])  # the nearer twin has the higher id
    ids = nearest_code(x, codebook, bf16_candidates=True)
    assert torch.equal(ids, torch.arange(256) + 2000 + 256)
    assert torch.equal(ids, _fp32_search(x, codebook))


def test_large_norms_fall_back_per_row_and_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # Everything near a common offset of norm 240: distances (~128) are tiny next to the bf16
    # error bound (~3e3), so every group is a candidate and the rows take the float32 tiles.
    calls: list[int] = []
    original = search._search_fp32

    def counting(x: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(x.shape[0])
        return original(x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(search, "_search_fp32", counting)
    g = torch.Generator().manual_seed(11)
    offset = torch.full((64,), 30.0)
    codebook = offset + torch.randn(3000, 64, generator=g)
    x = offset + torch.randn(200, 64, generator=g)
    ids = nearest_code(x, codebook, bf16_candidates=True)
    assert sum(calls) > 0  # some rows overflowed their candidate budget
    monkeypatch.setattr(search, "_search_fp32", original)
    assert torch.equal(ids, _fp32_search(x, codebook))
    # ...and float32's answer is the true nearest code up to its rounding (~4e-3 here).
    dist = torch.cdist(x.double(), codebook.double()) ** 2
    assert torch.all(dist.gather(1, ids[:, None])[:, 0] <= dist.min(dim=1).values + 0.05)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_bf16_error_bound_holds(scale: float) -> None:
    # The proof's inequality |a_k - r_k| <= E, checked on the matmul the route really runs.
    g = torch.Generator().manual_seed(int(scale * 10))
    d = 64
    x = torch.randn(128, d, generator=g) * scale
    codebook = torch.randn(512, d, generator=g) * scale * torch.rand(512, 1, generator=g)
    c_sq = (codebook * codebook).sum(1)
    c_aug = torch.cat([codebook, c_sq[:, None], torch.zeros(512, 1)], 1).bfloat16()
    x_aug = torch.cat([-2 * x, torch.ones(128, 1), torch.zeros(128, 1)], 1).bfloat16()
    approx = (c_aug @ x_aug.t()).double().t()  # (N, K)
    exact = c_sq.double() - 2 * x.double() @ codebook.double().t()
    bound = search._bf16_error_scale(d) * (
        c_sq.max().double() + 2 * x.double().norm(dim=1, keepdim=True) * c_sq.max().sqrt().double()
    )
    assert torch.all((approx - exact).abs() <= bound)


def test_non_finite_rows_do_not_break_the_others() -> None:
    g = torch.Generator().manual_seed(5)
    x, codebook = torch.randn(40, 8, generator=g), torch.randn(700, 8, generator=g)
    x[3] = float("nan")
    ids = nearest_code(x, codebook, bf16_candidates=True)
    keep = torch.arange(40) != 3
    assert torch.equal(ids[keep], _fp32_search(x[keep], codebook))


def test_the_bf16_route_runs_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = search._search_bf16

    def counted(*args: torch.Tensor | int) -> torch.Tensor:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(search, "_search_bf16", counted)
    x, codebook = integer_data(50, 300, 8, seed=6)
    default = nearest_code(x, codebook)
    assert calls == []  # the default is the float32 search
    assert torch.equal(nearest_code(x, codebook, bf16_candidates=True), default)
    assert calls == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x, codebook = integer_data(3000, 5000, 64, seed=5)
    expected = nearest_code(x, codebook)
    for max_bytes in (4096, DEFAULT_MAX_BYTES):
        ids = nearest_code(x.cuda(), codebook.cuda(), max_bytes=max_bytes)
        assert ids.device.type == "cuda"
        assert torch.equal(ids.cpu(), expected)
