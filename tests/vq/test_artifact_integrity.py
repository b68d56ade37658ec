"""Artifact integrity: checksums, atomic export, tampering (flipped bytes, edited configs that
fit the shapes, a pickle under the weights' name, symlinks out of the artifact), non-finite
weights. Each is refused by ``load_tokenizer`` naming the file and the problem."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

from vq.artifact import CONFIG_NAME, WEIGHTS_NAME, ArtifactError, load_tokenizer, save_tokenizer
from vq.model import VQVAE, QuantizerConfig, VQVAEConfig

REPO = Path(__file__).resolve().parents[2]
# The previous release's shipped tokenizer, written before checksums existed.
LEGACY_MODEL = REPO / "tests" / "fixtures" / "legacy_fsq_artifact"


def tiny(quantizer: QuantizerConfig | None = None) -> VQVAE:
    q = quantizer or QuantizerConfig(kind="vq", codebook_size=16)
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(f=4, widths=(8, 16, 16), num_res_blocks=1, quantizer=q)).eval()


def fsq() -> VQVAE:
    return tiny(QuantizerConfig(kind="fsq", codebook_size=1000, levels=(8, 5, 5, 5)))


def edit_config(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((root / CONFIG_NAME).read_text())
    edit(data)
    (root / CONFIG_NAME).write_text(json.dumps(data))


def test_checksums_are_recorded_and_verified(tmp_path: Path) -> None:
    out = save_tokenizer(tiny(), tmp_path / "tok")
    record = json.loads((out / CONFIG_NAME).read_text())["files"][WEIGHTS_NAME]
    data = (out / WEIGHTS_NAME).read_bytes()
    assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    load_tokenizer(out)


@pytest.mark.parametrize("offset", [10, -1000, -1])  # in the JSON header, in the tensors
def test_flipped_byte_is_refused_naming_the_file(tmp_path: Path, offset: int) -> None:
    out = save_tokenizer(tiny(), tmp_path / "tok")
    data = bytearray((out / WEIGHTS_NAME).read_bytes())
    data[offset] ^= 0x01
    (out / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors is damaged: its sha256 is"):
        load_tokenizer(out)


def test_pickle_renamed_to_safetensors_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    out = save_tokenizer(tiny(), tmp_path / "tok")
    with (out / WEIGHTS_NAME).open("wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(ArtifactError, match=r"model\.safetensors is damaged"):
        load_tokenizer(out)
    edit_config(out, lambda d: d.pop("files"))  # without checksums: safetensors refuses it
    with pytest.raises(ArtifactError, match=r"model\.safetensors could not be read as safetensors"):
        load_tokenizer(out, allow_unverified=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", [WEIGHTS_NAME, CONFIG_NAME])
def test_symlink_out_of_the_artifact_is_refused(tmp_path: Path, name: str) -> None:
    other = save_tokenizer(tiny(), tmp_path / "other")
    out = save_tokenizer(tiny(), tmp_path / "tok")
    (out / name).unlink()
    (out / name).symlink_to(other / name)  # the very same bytes, but not this artifact's
    with pytest.raises(ArtifactError, match=rf"{name} is a symbolic link to .*outside"):
        load_tokenizer(out)


def test_symlink_inside_the_artifact_and_a_linked_directory_load(tmp_path: Path) -> None:
    out = save_tokenizer(tiny(), tmp_path / "tok")
    (out / WEIGHTS_NAME).rename(out / "weights.bin")
    (out / WEIGHTS_NAME).symlink_to("weights.bin")
    (tmp_path / "alias").symlink_to(out, target_is_directory=True)
    load_tokenizer(tmp_path / "alias")


def test_fifo_instead_of_weights_is_refused(tmp_path: Path) -> None:
    out = save_tokenizer(tiny(), tmp_path / "tok")
    (out / WEIGHTS_NAME).unlink()
    os.mkfifo(out / WEIGHTS_NAME)  # reading it would block forever
    with pytest.raises(ArtifactError, match=r"model\.safetensors is not a regular file"):
        load_tokenizer(out)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # A shape changed in config.json: the weights no longer fit.
        (lambda d: d["model"].update(widths=[8, 16, 32]), r"shape mismatches"),
        # FSQ levels edited with a matching codebook_size: every shape still fits, the
        # summary (what /v1/models shows) no longer derives from the model section.
        (
            lambda d: d["model"]["quantizer"].update(levels=[8, 6, 5, 5], codebook_size=1200),
            r"quantizer\.codebook_size=1000 \(the model section gives 1200\)",
        ),
        # The summary edited alone.
        (lambda d: d["quantizer"].update(levels=[8, 6, 5, 5]), r"quantizer\.levels=\[8, 6, 5, 5\]"),
        (lambda d: d["quantizer"].update(kind="vq"), r"quantizer\.kind='vq'"),
        (lambda d: d.update(image_range=[0, 1]), r"image_range=\[0, 1\]"),
        (lambda d: d.update(in_channels=1), r"in_channels=1 \(the model section gives 3\)"),
    ],
)
def test_config_edits_are_refused(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    out = save_tokenizer(fsq(), tmp_path / "tok")
    edit_config(out, edit)
    with pytest.raises(ArtifactError, match=message):
        load_tokenizer(out)


def test_consistent_config_edit_that_fits_the_shapes_is_refused(tmp_path: Path) -> None:
    # Levels, codebook size and summary all edited together: only the weights' record of the
    # config they were saved with can tell.
    out = save_tokenizer(fsq(), tmp_path / "tok")

    def edit(d: dict[str, Any]) -> None:
        d["model"]["quantizer"].update(levels=[8, 6, 5, 5], codebook_size=1200)
        d["quantizer"].update(levels=[8, 6, 5, 5], codebook_size=1200)

    edit_config(out, edit)
    with pytest.raises(ArtifactError, match=r"'model' section is not the one model\.safetensors"):
        load_tokenizer(out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, bad: float) -> None:
    model = tiny()
    with torch.no_grad():
        model.decoder.conv_out.weight.view(-1)[3] = bad
    out = save_tokenizer(model, tmp_path / "tok")
    with pytest.raises(ArtifactError, match=r"tensor 'decoder\.conv_out\.weight' has 1 non-finite"):
        load_tokenizer(out)


def test_artifact_without_checksums_loads_only_when_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert "files" not in json.loads((LEGACY_MODEL / CONFIG_NAME).read_text())
    copy = tmp_path / "default"
    shutil.copytree(LEGACY_MODEL, copy)
    with pytest.raises(ArtifactError, match=r"no 'files' checksum list.*allow_unverified"):
        load_tokenizer(copy, precision="fp32")
    tok = load_tokenizer(copy, precision="fp32", allow_unverified=True)
    assert tok.model.codebook_size == 1000
    assert "UNVERIFIED" in caplog.text


def _resave_weights(root: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Replace the weights and record their checksum, as someone editing the artifact
    consistently would: only checks beyond the checksum can catch it."""
    safetensors.torch.save_file(state, str(root / WEIGHTS_NAME), metadata=metadata)
    blob = (root / WEIGHTS_NAME).read_bytes()
    record = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    edit_config(root, lambda d: d["files"].update({WEIGHTS_NAME: record}))


def test_modified_weights_with_the_checksum_list_removed_are_refused(tmp_path: Path) -> None:
    out = save_tokenizer(tiny(), tmp_path / "tok")
    with safetensors.safe_open(str(out / WEIGHTS_NAME), framework="pt") as f:
        meta = f.metadata()
    state = safetensors.torch.load_file(str(out / WEIGHTS_NAME))
    state["decoder.conv_out.bias"] += 1.0
    safetensors.torch.save_file(state, str(out / WEIGHTS_NAME), metadata=meta)
    edit_config(out, lambda d: d.pop("files"))
    with pytest.raises(ArtifactError, match=r"no 'files' checksum list"):
        load_tokenizer(out)


def test_fp16_weights_are_refused_naming_the_dtype(tmp_path: Path) -> None:
    out = save_tokenizer(tiny(), tmp_path / "tok")
    with safetensors.safe_open(str(out / WEIGHTS_NAME), framework="pt") as f:
        meta = f.metadata()
    state = safetensors.torch.load_file(str(out / WEIGHTS_NAME))
    _resave_weights(
        out, {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, meta
    )
    with pytest.raises(
        ArtifactError, match=r"dtype mismatches: .*torch\.float16 vs model torch\.float32"
    ):
        load_tokenizer(out)


def test_permuted_fsq_levels_with_the_config_record_stripped_are_refused(tmp_path: Path) -> None:
    out = save_tokenizer(fsq(), tmp_path / "tok")
    state = safetensors.torch.load_file(str(out / WEIGHTS_NAME))
    _resave_weights(out, state, {"format": "pt"})  # the model-config record removed

    def permute(d: dict[str, Any]) -> None:
        d["model"]["quantizer"]["levels"] = [5, 5, 5, 8]
        d["quantizer"]["levels"] = [5, 5, 5, 8]

    edit_config(out, permute)
    with pytest.raises(ArtifactError, match=r"no 'model_config_sha256' record.*allow_unverified"):
        load_tokenizer(out)


def test_symlink_loop_is_an_artifact_error(tmp_path: Path) -> None:
    out = save_tokenizer(tiny(), tmp_path / "tok")
    (out / WEIGHTS_NAME).unlink()
    (out / WEIGHTS_NAME).symlink_to(WEIGHTS_NAME)
    with pytest.raises(ArtifactError, match=r"model\.safetensors"):
        load_tokenizer(out)


def test_onnx_graphs_are_recorded_only_in_their_own_artifact(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from vq.artifact import read_artifact_file
    from vq.onnx_export import DECODER_NAME, ENCODER_NAME, export_onnx

    own = save_tokenizer(tiny(), tmp_path / "own")
    export_onnx(load_tokenizer(own, precision="fp32").model, own)
    tok = load_tokenizer(own)
    files = json.loads((own / CONFIG_NAME).read_text())["files"]
    assert {ENCODER_NAME, DECODER_NAME} <= set(files)
    assert read_artifact_file(own, tok.metadata, ENCODER_NAME) == (own / ENCODER_NAME).read_bytes()

    torch.manual_seed(1)
    stranger = VQVAE(tiny().config)  # same architecture, other weights
    with pytest.warns(UserWarning, match="not recorded"):
        export_onnx(stranger, own)
    with pytest.raises(ArtifactError, match=r"encoder\.onnx is damaged"):
        read_artifact_file(own, load_tokenizer(own).metadata, ENCODER_NAME)


def test_save_keeps_other_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    save_tokenizer(tiny(), out)
    (out / "card.md").write_text("# my model\n")
    save_tokenizer(tiny(), out)
    assert sorted(p.name for p in out.iterdir()) == ["card.md", CONFIG_NAME, WEIGHTS_NAME]
    assert (out / "card.md").read_text() == "# my model\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_export_killed_at_any_moment_never_leaves_a_half_artifact(tmp_path: Path) -> None:
    # A process re-exporting in a loop, SIGKILLed mid-way: whatever is at the path is a
    # complete artifact that loads (or, between the two renames, nothing at all).
    out = tmp_path / "tok"
    code = (
        "import sys, torch\n"
        "from vq.artifact import save_tokenizer\n"
        "from vq.model import VQVAE, VQVAEConfig, QuantizerConfig\n"
        "q = QuantizerConfig(kind='vq', codebook_size=4096)\n"
        "model = VQVAE(VQVAEConfig(f=4, widths=(8, 16, 16), code_dim=256, quantizer=q))\n"
        "while True:\n"
        "    save_tokenizer(model, sys.argv[1])\n"
        "    print('saved', flush=True)\n"
    )
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for delay in (0.0, 0.03, 0.11):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # one complete export
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if out.exists():
            load_tokenizer(out)
        else:  # killed between the renames: the previous artifact is complete, aside
            (old,) = tmp_path.glob(".tok.old-*/tok")
            load_tokenizer(old)
            shutil.move(old, out)
    save_tokenizer(tiny(), out)  # the next export cleans up after the killed ones
    assert not list(tmp_path.glob(".tok.tmp-*"))
