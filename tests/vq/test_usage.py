"""CodebookUsage figures against hand computations; merging and DDP reduction."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from vq import CodebookUsage
from vq.usage import histogram_perplexity


def test_figures_match_hand_computation() -> None:
    usage = CodebookUsage(4, window=6)
    assert usage.tokens_seen == 0 and usage.perplexity == 0.0
    assert usage.unseen_codes == 4 and usage.dead_codes == 0 and not usage.window_full

    usage.update(torch.tensor([[0, 0], [1, 0]]))  # window: 0 0 1 0
    assert usage.batch_usage == 2 / 4
    assert usage.window_usage == 2 / 4
    assert usage.histogram.tolist() == [3, 1, 0, 0]
    assert usage.histogram.dtype == torch.int64
    assert usage.unseen_codes == 2 and usage.dead_codes == 0  # 4 of 6 tokens: still filling
    p = [3 / 4, 1 / 4]
    assert usage.perplexity == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)))

    usage.update(torch.tensor([2, 2, 3]))  # 7 tokens > window 6: the first 0 leaves
    assert usage.batch_usage == 2 / 4
    assert usage.batch_histogram.tolist() == [0, 0, 2, 1]
    assert usage.histogram.tolist() == [2, 1, 2, 1]  # window: 0 1 0 2 2 3
    assert usage.window_usage == 1.0 and usage.dead_codes == 0 and usage.unseen_codes == 0
    assert usage.window_full
    assert usage.tokens_seen == 7 and usage.window_tokens == 6
    assert usage.epoch_histogram.tolist() == [3, 1, 2, 1]
    assert usage.perplexity == pytest.approx(
        math.exp(-2 * (2 / 6 * math.log(2 / 6) + 1 / 6 * math.log(1 / 6)))
    )

    usage.update(torch.tensor([3, 3, 3, 3, 3, 3, 3, 1]))  # longer than the window on its own
    assert usage.histogram.tolist() == [0, 1, 0, 5]
    assert usage.window_usage == 0.5 and usage.dead_codes == 2 and usage.unseen_codes == 0
    assert usage.epoch_usage == 1.0 and usage.tokens_seen == 15

    usage.reset_epoch()
    assert usage.epoch_usage == 0.0 and usage.window_usage == 0.5
    usage.update(torch.tensor([2]))
    assert usage.epoch_histogram.tolist() == [0, 0, 1, 0]
    assert usage.epoch_usage == 0.25
    assert usage.tokens_seen == 16


def test_uniform_usage_has_perplexity_K() -> None:
    usage = CodebookUsage(16, window=64)
    usage.update(torch.arange(16).repeat(4))
    assert usage.perplexity == pytest.approx(16.0)
    assert histogram_perplexity(torch.tensor([0, 5, 0])) == pytest.approx(1.0)


def test_window_matches_brute_force_over_a_random_stream() -> None:
    g = torch.Generator().manual_seed(0)
    usage = CodebookUsage(50, window=300)
    stream: list[int] = []
    for _ in range(40):
        n = int(torch.randint(0, 200, (1,), generator=g))
        batch = torch.randint(0, 50, (n,), generator=g) ** 2 % 50  # skewed
        usage.update(batch)
        stream.extend(batch.tolist())
        expected = torch.bincount(torch.tensor(stream[-300:], dtype=torch.long), minlength=50)
        assert torch.equal(usage.histogram, expected)
    assert usage.tokens_seen == len(stream)


def _stream(seed: int, n_batches: int, k: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, k, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g)
        for _ in range(n_batches)
    ]


def _figures(u: CodebookUsage) -> dict[str, Any]:
    return {
        "histogram": u.histogram.tolist(),
        "epoch": u.epoch_histogram.tolist(),
        "window_usage": u.window_usage,
        "epoch_usage": u.epoch_usage,
        "perplexity": u.perplexity,
        "dead": u.dead_codes,
        "unseen": u.unseen_codes,
        "seen": u.tokens_seen,
    }


def test_two_trackers_summed_equal_one_tracker_over_both_streams() -> None:
    k = 64
    a, b, both = CodebookUsage(k, 1000), CodebookUsage(k, 1000), CodebookUsage(k, 2000)
    sa, sb = _stream(1, 10, k), _stream(2, 12, k)
    for x in sa:
        a.update(x)
        both.update(x)
    for x in sb:
        b.update(x)
        both.update(x)
    merged = a + b
    assert _figures(merged) == _figures(both)
    assert _figures(sum([a, b])) == _figures(both)
    assert merged.window == 2000
    # The last batches add up.
    assert torch.equal(merged.batch_histogram, a.batch_histogram + b.batch_histogram)
    # The merged tracker keeps going like the single one.
    extra = torch.randint(0, k, (1500,))
    merged.update(extra)
    both.update(extra)
    assert _figures(merged) == _figures(both)


def test_state_tensor_round_trip() -> None:
    usage = CodebookUsage(10, window=20)
    for x in _stream(3, 5, 10):
        usage.update(x)
    clone = CodebookUsage.from_state_tensor(usage.state_tensor())
    assert _figures(clone) == _figures(usage)
    assert torch.equal(clone.batch_histogram, usage.batch_histogram)
    assert _figures(usage.all_reduce()) == _figures(usage)  # no process group: a copy


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([0.0, 1.0]), "integer tensor with values in \\[0, 8\\)"),
        (torch.tensor([True]), "integer tensor"),
        (torch.tensor([3, 8]), "\\[0, 8\\); got values in \\[3, 8\\]"),
        (torch.tensor([-1]), "\\[0, 8\\)"),
    ],
)
def test_update_rejects_bad_ids(bad: torch.Tensor, match: str) -> None:
    usage = CodebookUsage(8, window=4)
    with pytest.raises(ValueError, match=match):
        usage.update(bad)
    assert usage.tokens_seen == 0


def test_constructor_and_merge_validation() -> None:
    with pytest.raises(ValueError, match="codebook_size"):
        CodebookUsage(0)
    with pytest.raises(ValueError, match="window"):
        CodebookUsage(4, window=0)
    with pytest.raises(ValueError, match="codebook_size 4 and 5"):
        CodebookUsage(4) + CodebookUsage(5)


def _ddp_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    usage = CodebookUsage(32, window=500)
    for x in _stream(10 + rank, 6, 32):
        usage.update(x)
    total = usage.all_reduce()
    torch.save(total.state_tensor(), os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_all_reduce_across_ranks_equals_merge(tmp_path: Any) -> None:
    world = 2
    mp.spawn(
        _ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True
    )
    results = [
        CodebookUsage.from_state_tensor(torch.load(tmp_path / f"rank{r}.pt")) for r in range(world)
    ]
    local = []
    for rank in range(world):
        u = CodebookUsage(32, window=500)
        for x in _stream(10 + rank, 6, 32):
            u.update(x)
        local.append(u)
    expected = _figures(local[0] + local[1])
    assert _figures(results[0]) == expected
    assert _figures(results[1]) == expected
