"""Two processes over gloo on the CPU, as users scale out: every quantizer keeps one codebook
on every rank, usage counts both ranks' tokens, and ``vq-train predict`` on 2 processes covers
every image once and resumes a killed run from the shards already written."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.train.helpers import CONFIGS, TINY_OVERRIDES, run_cli, write_image
from vq.model import VQVAE, QuantizerConfig, VQVAEConfig

QUANTIZERS = {
    "ste": QuantizerConfig(kind="vq", codebook_size=64),
    "rotation": QuantizerConfig(kind="vq", codebook_size=64, grad_estimator="rotation"),
    "simvq": QuantizerConfig(kind="vq", codebook_size=64, codebook="linear"),
    "simvq_rotation": QuantizerConfig(
        kind="vq", codebook_size=64, codebook="linear", grad_estimator="rotation"
    ),
    "fsq": QuantizerConfig(kind="fsq", codebook_size=64, levels=(4, 4, 4)),
    "ema_data_init_restart": QuantizerConfig(
        kind="vq",
        codebook_size=64,
        codebook_update="ema",
        codebook_init="data",
        dead_code_threshold=0.5,
    ),
    "gradient_restart": QuantizerConfig(kind="vq", codebook_size=64, dead_code_threshold=0.5),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_every_quantizer(rank: int, world: int, port: int, out: str) -> None:
    """One gloo group; each quantizer trains 4 DDP steps on rank-specific data."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name, q in QUANTIZERS.items():
            torch.manual_seed(0)  # the same initial model on both ranks, as seed_everything
            model = VQVAE(VQVAEConfig(f=4, widths=(8, 16, 16), code_dim=8, quantizer=q))
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            gen = torch.Generator().manual_seed(100 + rank)  # each rank its own images
            for _ in range(4):
                x = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
                out_ = ddp(x)
                loss = torch.nn.functional.mse_loss(out_.recon, x) + out_.quantizer.loss
                opt.zero_grad()
                loss.backward()
                opt.step()
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            torch.save(state, Path(out) / f"{name}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_quantizer_keeps_one_codebook_on_both_ranks(tmp_path: Path) -> None:
    mp.spawn(_train_every_quantizer, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    for name in QUANTIZERS:
        a = torch.load(tmp_path / f"{name}-rank0.pt", weights_only=True)
        b = torch.load(tmp_path / f"{name}-rank1.pt", weights_only=True)
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: ranks differ in {different}"
        if "quantizer.ema_count" in a:  # the statistics moved: the ranks' batches counted
            assert not torch.equal(
                a["quantizer.ema_count"], torch.ones_like(a["quantizer.ema_count"])
            )


DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def _ddp_fit(root: Path, options: list[str], whole: bool = False) -> Path:
    """`vq-train fit` of configs/rotation.yaml at tiny size on 2 gloo processes; each rank
    saves its state (``whole``: the LightningModule's) into ``root/ranks``."""
    save = json.dumps(
        {
            "class_path": "tests.train.helpers.SaveRankState",
            "init_args": {"out_dir": str(root / "ranks"), "whole": whole},
        }
    )
    proc = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "rotation.yaml"),
            *TINY_OVERRIDES,
            *DDP,
            "--trainer.enable_progress_bar=false",
            *options,
            f"--trainer.default_root_dir={root}",
            f"--trainer.callbacks+={save}",
        ],
        cwd=root,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vq-train fit` on 2 gloo processes with EMA + data init + dead-code restart."""
    return _ddp_fit(
        tmp_path_factory.mktemp("ddp"),
        [
            "--model.vqvae.quantizer.codebook_update=ema",
            "--model.vqvae.quantizer.codebook_init=data",
            "--model.vqvae.quantizer.dead_code_threshold=0.5",
        ],
    )


def test_ddp_fit_ends_with_identical_codebooks_and_two_rank_usage(ddp_run: Path) -> None:
    a = torch.load(ddp_run / "ranks" / "rank0.pt", weights_only=True)
    b = torch.load(ddp_run / "ranks" / "rank1.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert a["state"].keys() == b["state"].keys() >= {"codebook", "ema_count", "ema_sum"}
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    # Validation usage counts both ranks' tokens: the 2 held-out photographs x 2 crops of
    # 32x32 at f=8 make 4 x 16 tokens, half on each rank.
    metrics = json.loads((ddp_run / "version_0" / "artifact" / "config.json").read_text())[
        "metrics"
    ]
    assert metrics["tokens"] == 4 * 16


def test_ddp_trains_the_adversarial_recipe_with_identical_ranks(tmp_path: Path) -> None:
    """Two optimizers and two backward passes a step under plain ``ddp``: each pass leaves
    the other player's parameters without gradients, which the CLI tells DDP to allow."""
    options = ["--model.adversarial.weight=0.5", "--model.adversarial.channels=8"]
    _ddp_fit(tmp_path, [*options, "--model.ema.decay=0.9"], whole=True)
    a = torch.load(tmp_path / "ranks" / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "ranks" / "rank1.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert any(k.startswith("recipe.discriminator.") for k in a["state"])
    assert any(k.startswith("ema.") for k in a["state"])
    different = [k for k in a["state"] if not torch.equal(a["state"][k], b["state"][k])]
    assert not different, f"ranks differ in {different}"


def _manifest_paths(out: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for name in ("manifest", "skipped"):
        for f in out.glob(f"{name}-rank*.jsonl"):
            seen.update(json.loads(line)["path"] for line in f.read_text().splitlines())
    return seen


def test_ddp_predict_covers_every_image_once_and_resumes_a_killed_run(
    ddp_run: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    names = [f"img{i}.png" for i in range(6)] + ["sub/odd.png"]
    for i, name in enumerate(names):
        write_image(images / name, 40 if i % 2 else 32, 48, seed=i)
    (images / "bad.png").write_bytes(b"not an image")
    run = ddp_run / "version_0"
    base = [
        "predict",
        "--config",
        str(run / "config.yaml"),
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"--data.predict_root={images}",
        "--data.predict_batch_size=1",
        "--predict_writer.shard_size=1",
        "--trainer.enable_progress_bar=false",
    ]
    # A single-process run killed after 3 batches, then re-run on 2 processes.
    out = tmp_path / "codes"
    kill = '{"class_path": "tests.train.helpers.KillAtPredictBatch", "init_args": {"batch": 3}}'
    proc = run_cli(
        [*base, f"--predict_writer.out_dir={out}", f"--trainer.callbacks+={kill}"], tmp_path
    )
    assert proc.returncode < 0, proc.stderr[-3000:]
    first = _manifest_paths(out)
    assert 0 < sum(first.values()) < len(names) + 1

    proc = run_cli([*base, *DDP, f"--predict_writer.out_dir={out}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{sum(first.values())} done by an earlier run" in proc.stdout
    assert _manifest_paths(out) == Counter([*names, "bad.png"])  # every file exactly once
    assert {p.name for p in out.glob("manifest-rank*.jsonl")} == {
        "manifest-rank0.jsonl",
        "manifest-rank1.jsonl",
    }

    # The codes equal those of an uninterrupted single-process run.
    whole = tmp_path / "whole"
    assert run_cli([*base, f"--predict_writer.out_dir={whole}"], tmp_path).returncode == 0
    import numpy as np

    def codes(d: Path) -> dict[str, list[int]]:
        found = {}
        for f in d.glob("manifest-rank*.jsonl"):
            for line in f.read_text().splitlines():
                e = json.loads(line)
                found[e["path"]] = np.load(d / e["shard"])[e["row"]].ravel().tolist()
        return found

    assert codes(out) == codes(whole)
