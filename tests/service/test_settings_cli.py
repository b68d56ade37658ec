"""Settings from the environment, vq-serve flags over them, model specs."""

from __future__ import annotations

import re
import sys

import pytest

from service.cli import build_parser, settings_from_args
from service.settings import Settings, get_settings, parse_model_specs


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("default=models/default", {"default": "models/default"}),
        ("a=/x/a, b=rel/b", {"a": "/x/a", "b": "rel/b"}),
        ('{"a": "/x/a"}', {"a": "/x/a"}),
        (["a=x", "b=y"], {"a": "x", "b": "y"}),
        ("just/a/path", {"default": "just/a/path"}),
        ({"m": "p"}, {"m": "p"}),
    ],
)
def test_model_specs(value: object, expected: dict[str, str]) -> None:
    assert parse_model_specs(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a=x,a=y", "twice"),
        ("bad name=x", "not allowed"),
        ("a=", "empty path"),
        ("", "empty"),
        ("{not json", "JSON"),
        (3, "not allowed"),
    ],
)
def test_bad_model_specs(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_model_specs(value)


def test_defaults() -> None:
    s = Settings()
    assert s.models == {"default": "models/default"}
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.max_upload_bytes == 20 * 1024 * 1024 and s.max_image_side == 2048
    assert s.effective_batch_size == s.max_batch_size > 1


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_MODELS", "a=/srv/a,b=rel/b")
    monkeypatch.setenv("VQ_PORT", "9001")
    monkeypatch.setenv("VQ_BATCHING", "false")
    monkeypatch.setenv("VQ_DEVICE", "cpu")
    s = Settings()
    assert s.models == {"a": "/srv/a", "b": "rel/b"}
    assert s.port == 9001 and s.effective_batch_size == 1
    monkeypatch.setenv("VQ_DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        Settings()


def test_get_settings_is_cached_and_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("VQ_PORT", "9002")
    try:
        assert get_settings() is get_settings()
        assert get_settings().port == 9002
    finally:
        get_settings.cache_clear()


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_PORT", "9003")
    monkeypatch.setenv("VQ_HOST", "0.0.0.0")
    monkeypatch.setenv("VQ_MODELS", "env=/env")
    args = build_parser().parse_args(
        ["--port", "7000", "--model", "a=/x", "--model", "b=y", "--no-batching"]
    )
    s = settings_from_args(args)
    assert s.port == 7000 and s.host == "0.0.0.0"  # flag wins; env fills the rest
    assert s.models == {"a": "/x", "b": "y"}
    assert s.effective_batch_size == 1
    assert not s.allow_unverified
    assert settings_from_args(build_parser().parse_args(["--allow-unverified"])).allow_unverified


def test_cli_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--model", "bad name=x"])
    assert info.value.code == 2
    assert "not allowed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--model", "a=x", "--model", "b=y"], "models", {"a": "x", "b": "y"}),
        (["--models", "a=x"], "models", {"a": "x"}),
        (["--model", "just/a/path"], "models", {"default": "just/a/path"}),
        (["--allow-unverified"], "allow_unverified", True),
        (["--no-batching"], "batching", False),
        (["--memory-budget", "8G"], "memory_budget", 8 * 2**30),
        (["--precision", "auto"], "precision", None),
        (["--log-level", "debug"], "log_level", "debug"),
        (["--max-batch-pixels", "1024"], "max_batch_pixels", 1024),
    ],
)
def test_flags_set_their_field(argv: list[str], field: str, value: object) -> None:
    assert getattr(settings_from_args(build_parser().parse_args(argv)), field) == value


def test_every_setting_has_a_flag_named_after_it() -> None:
    help_text = build_parser().format_help()
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.default is True:
            flag = "--no-" + flag[2:]
        assert re.search(rf"{flag}(?![\w-])", help_text), flag


def test_settings_alone_read_no_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["vq-serve", "--port", "1234"])
    assert Settings().port == 8000


def test_a_duplicate_model_name_is_refused() -> None:
    with pytest.raises(ValueError, match="'a' is given twice"):
        settings_from_args(build_parser().parse_args(["--model", "a=x", "--model", "a=y"]))


def test_help_prints_no_null_defaults() -> None:
    """A None default reads as the description's own "(default: ...)", else as unset."""
    text = build_parser().format_help()
    assert "null" not in text
    assert "(default: half of the machine's or cgroup's memory)" in " ".join(text.split())
