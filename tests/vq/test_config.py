"""The config tree: one definition per option, validators that agree with the modules,
every option reaching the module it configures, and old artifacts still loading."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import typing
from pathlib import Path
from typing import Any

import pytest

import vq
from vq.config import FSQConfig, VQConfig, VQVAEConfig, quantizer_config
from vq.model import build_quantizer
from vq.quantizers import FSQ, L2Codebook, PlainCodebook, VectorQuantizer

VQ_DIR = Path(vq.__file__).parent
ROOT = VQ_DIR.parent
# The shipped tokenizer of the previous release (format 1, written before the config tree).
LEGACY = ROOT / "tests" / "fixtures" / "legacy_fsq_artifact"


@pytest.mark.parametrize(
    "name",
    [
        "CodebookKind",
        "GradEstimator",
        "CodebookUpdate",
        "CodebookInit",
        "check_choice",
        "FSQ_RECOMMENDED_LEVELS",
    ],
)
def test_each_option_is_defined_once_in_vq(name: str) -> None:
    """A module of vq that has the name holds vq.config's object, not its own copy."""
    definition = getattr(vq.config, name)
    modules = [importlib.import_module(f"vq.{m.name}") for m in pkgutil.iter_modules(vq.__path__)]
    copies = [m.__name__ for m in modules if getattr(m, name, definition) is not definition]
    assert copies == []


def test_the_validators_accept_exactly_the_declared_choices() -> None:
    for field, alias in (
        ("grad_estimator", vq.config.GradEstimator),
        ("codebook_update", vq.config.CodebookUpdate),
        ("codebook_init", vq.config.CodebookInit),
        ("codebook_norm", vq.config.CodebookNorm),
    ):
        allowed = typing.get_args(alias)
        for choice in allowed:
            VQConfig(codebook_size=8, **{field: choice})
        with pytest.raises(ValueError, match=field):
            VQConfig(codebook_size=8, **{field: "nope"})


def test_build_quantizer_passes_every_option() -> None:
    cfg = VQConfig(
        codebook_size=8,
        grad_estimator="rotation",
        beta=0.5,
        codebook_update="ema",
        ema_decay=0.5,
        ema_eps=1e-3,
        dead_code_threshold=0.25,
        codebook_init="data",
        search_max_bytes=4096,
    )
    module = build_quantizer(cfg, dim=4)
    for field in dataclasses.fields(VQConfig):
        if field.name == "kind":
            continue
        # The plain codebook component owns its update rule, init, EMA and restart options.
        book_attr = {
            "codebook_update": "update",
            "codebook_init": "init",
            "ema_decay": "ema_decay",
            "ema_eps": "ema_eps",
            "dead_code_threshold": "dead_code_threshold",
        }
        if field.name in book_attr:
            owner, attr = module.book, book_attr[field.name]
        else:
            owner = module
            attr = "codebook_kind" if field.name == "codebook" else field.name
            attr = "_codebook_size" if field.name == "codebook_size" else attr
        assert getattr(owner, attr) == getattr(cfg, field.name), field.name
    assert module.config == cfg and isinstance(module.book, PlainCodebook)
    l2 = dataclasses.replace(cfg, codebook_norm="l2")
    module = build_quantizer(l2, dim=4)
    assert isinstance(module.book, L2Codebook) and module.config == l2
    assert (module.book.update, module.book.init) == ("ema", "data")


@pytest.mark.parametrize("cls", [VectorQuantizer, PlainCodebook, L2Codebook])
def test_quantizer_option_defaults_come_from_the_config(cls: type) -> None:
    # No constructor restates a default: options left out are VQConfig's.
    defaults = [n for n, p in inspect.signature(cls).parameters.items() if p.default is not p.empty]
    assert defaults == []
    if cls is VectorQuantizer:
        assert cls(4, 16).config == VQConfig(codebook_size=16)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VectorQuantizer(4, 16, betta=0.5), r"unknown VQConfig field\(s\) \['betta'\]"),
        (lambda: VectorQuantizer(4, 16, codebook_norm="cos"), r"codebook_norm='cos'.*'l2'"),
        (
            lambda: VectorQuantizer(4, 16, codebook="linear", codebook_norm="l2"),
            "codebook_norm='l2' needs codebook='plain'",
        ),
        (lambda: VectorQuantizer(0, 16), "dim must be a positive int, got 0"),
        (lambda: FSQ([8, 5], dim=True), "dim must be a positive int, got True"),
    ],
)
def test_quantizer_options_are_checked_with_clear_errors(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("module", "size", "options"),
    [
        (VectorQuantizer(4, 16, codebook="linear"), (4, 16), "codebook='linear'"),
        (VectorQuantizer(4, 16, codebook_norm="l2"), (4, 16), "codebook_norm='l2'"),
        (FSQ([8, 5], dim=6), (6, 40), "levels=[8, 5]"),
        (FSQ([8, 5]), (2, 40), "levels=[8, 5]"),
    ],
)
def test_quantizers_share_dim_codebook_size_and_repr(
    module: Any, size: tuple[int, int], options: str
) -> None:
    assert (module.dim, module.codebook_size) == size
    dim, k = size
    assert module.extra_repr().startswith(f"dim={dim}, codebook_size={k}, ")
    assert options in module.extra_repr()


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ({"ema_decay": 0.0}, True),
        ({"ema_decay": 1.0}, False),
        ({"codebook_size": 1}, False),
        ({"codebook_size": 2}, True),
        ({"codebook": "linear", "dead_code_threshold": 0.5}, False),
        ({"ema_eps": 0.0}, False),
        ({"search_max_bytes": 0}, False),
    ],
)
def test_config_and_module_validators_agree(options: dict[str, Any], ok: bool) -> None:
    kwargs = {"codebook_size": 16, **options}
    for build in (lambda: VQConfig(**kwargs), lambda: vq.VectorQuantizer(4, **kwargs)):
        if ok:
            build()
        else:
            with pytest.raises(ValueError, match=next(iter(options))):
                build()


def test_format_1_quantizer_sections_load_with_defaults() -> None:
    # What every format-1 artifact written before the config tree holds.
    data = json.loads((LEGACY / "config.json").read_text())
    cfg = VQVAEConfig.from_dict(data["model"])
    assert cfg.architecture == "vqvae" and isinstance(cfg.quantizer, FSQConfig)
    old_vq = {k: v for k, v in VQConfig().to_dict().items()}
    for new_field in ("ema_eps", "codebook_norm", "search_max_bytes"):
        del old_vq[new_field]
    assert quantizer_config(old_vq) == VQConfig()
    with pytest.raises(ValueError, match="codebook='linear' has no meaning for kind='fsq'"):
        quantizer_config(
            {"kind": "fsq", "codebook_size": 1000, "levels": [8, 5, 5, 5], "codebook": "linear"}
        )


def test_legacy_artifact_still_loads() -> None:
    tok = vq.load_tokenizer(LEGACY, precision="fp32", allow_unverified=True)
    assert tok.codebook_size == 1000 and tok.config.architecture == "vqvae"


def test_fsq_size_from_the_table_becomes_the_product_and_round_trips() -> None:
    cfg = FSQConfig(codebook_size=1024)
    assert cfg.levels == (8, 5, 5, 5) and cfg.codebook_size == 1000
    assert FSQConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("missing", "default"),
    [("widths", (32, 64, 128, 128)), ("code_dim", 3), ("quantizer", VQConfig())],
)
def test_config_json_with_nulls_or_missing_keys_takes_the_defaults(
    missing: str, default: Any
) -> None:
    # Older config.json files: a key left out, or null where the field was optional.
    full = VQVAEConfig(
        widths=(8, 8, 8, 8), code_dim=4, quantizer=FSQConfig(codebook_size=240, levels=(8, 6, 5))
    )
    for data in (
        {**full.to_dict(), missing: None},
        {k: v for k, v in full.to_dict().items() if k != missing},
    ):
        cfg = VQVAEConfig.from_dict(data)
        assert getattr(cfg, missing) == default != getattr(full, missing)
        assert VQVAEConfig.from_dict(cfg.to_dict()) == cfg


def test_vqgan_config_round_trips_and_resolves_defaults() -> None:
    cfg = VQVAEConfig(architecture="vqgan", f=16, quantizer=VQConfig(codebook_norm="l2"))
    assert cfg.widths == (128, 128, 256, 256, 512)
    assert (cfg.stem_width, cfg.z_channels, cfg.attn_levels) == (128, 512, (4,))
    assert VQVAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": (32, 48, 64)}, r"multiple of 32"),
        ({"attn_levels": (3,)}, r"attn_levels=\[3\]"),
        ({"num_res_blocks": 0}, r"num_res_blocks=0"),
        ({"decoder_widths": (32, 64)}, r"decoder_widths=\[32, 64\]"),
        ({"stem_width": 48}, r"stem_width=48"),
    ],
)
def test_vqgan_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(architecture="vqgan", f=4, widths=kwargs.pop("widths", (32, 64, 64)), **kwargs)


def test_vqgan_fields_hold_our_architectures_values_and_reject_others() -> None:
    cfg = VQVAEConfig(widths=(16, 32, 64, 64))
    assert (cfg.stem_width, cfg.z_channels) == (16, 64)
    assert (cfg.attn_levels, cfg.decoder_widths) == ((), cfg.widths)
    assert "stem_width" not in cfg.to_dict()  # what config.json of "vqvae" artifacts holds
    assert dataclasses.replace(cfg, in_channels=1).stem_width == 16
    with pytest.raises(ValueError, match="z_channels is for architecture='vqgan'"):
        VQVAEConfig(z_channels=8)
