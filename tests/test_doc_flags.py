"""Every `vq-serve`, `vq-train`, `vq-export`, `vq-import` and `vq-lpips-weights` command in
the README, docs/, the model cards and the card vq-import writes names only flags the tool
has: each `--flag` is looked up in the tool's own parser (its --help), the `vq-train` ones
in LightningCLI's parser of the named subcommand."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import types
import typing
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest

from vq.config import VQVAEConfig
from vq.hub import model_card

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# How each tool is invoked in the docs: the console script (maybe under .venv/bin/) or the
# module it runs.
TOOL = re.compile(
    r"(?:(?<=^)|(?<=[\s/`(]))(vq-serve|vq-train|vq-export|vq-import|vq-lpips-weights)(?=\s|$|`)"
    r"|python3? -m (train\.cli|service\.cli|train\.export|vq\.importer|train\.lpips_weights)\b"
)
MODULES = {
    "train.cli": "vq-train",
    "service.cli": "vq-serve",
    "train.export": "vq-export",
    "vq.importer": "vq-import",
    "train.lpips_weights": "vq-lpips-weights",
}
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w.-]*")
# A command ends at a shell separator or a comment.
END = re.compile(r"\s(?:&&|\|\|?|;|#)\s|$")


def documents() -> dict[str, str]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    paths += sorted((ROOT / "models").glob("*/card.md"))
    docs = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in paths}
    docs["vq-import's model card"] = model_card({"model": {}}, note="Converted by vq-import.")
    return docs


def command_texts(text: str) -> Iterator[str]:
    """Lines of fenced code blocks (backslash continuations joined) and inline code spans."""
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for block in fenced.findall(text):
        yield from block.replace("\\\n", " ").splitlines()
    for span in re.findall(r"`([^`]+)`", fenced.sub("", text)):
        yield span.replace("\n", " ")


def invocations(text: str) -> Iterator[tuple[str, str | None, list[str], str]]:
    """(tool, subcommand, flags, command) of each tool invocation in a document."""
    for line in command_texts(text):
        for match in TOOL.finditer(line):
            tool = match.group(1) or MODULES[match.group(2)]
            rest = line[match.end() :]
            end = END.search(rest)
            command = rest[: end.start() if end else len(rest)]
            words = command.split()
            sub = words[0] if words and words[0] in SUBCOMMANDS and tool == "vq-train" else None
            flags = [f.split("=")[0] for f in FLAG.findall(command)]
            yield tool, sub, flags, line.strip()


def help_text(main: Callable[[list[str]], object], args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*args, "--help"])
    return out.getvalue()


@cache
def known_flags(tool: str, sub: str | None) -> frozenset[str]:
    if tool == "vq-serve":
        from service.cli import build_parser

        text = build_parser().format_help()
    elif tool == "vq-export":
        from train.export import main as export_main

        text = help_text(export_main, [])
    elif tool == "vq-import":
        from vq.importer import main as import_main

        text = help_text(import_main, [])
    elif tool == "vq-lpips-weights":
        from train.lpips_weights import main as lpips_weights_main

        text = help_text(lpips_weights_main, [])
    else:
        from train.cli import main as train_main

        subs = [sub] if sub else list(SUBCOMMANDS)
        text = "".join(help_text(train_main, [s]) for s in subs)
    return frozenset(FLAG.findall(text))


def dataclass_has(cls: type, path: list[str]) -> bool:
    """Whether ``path`` (e.g. ["quantizer", "levels"]) names a field under dataclass ``cls``
    (through ``X | Y | None`` unions: any member)."""
    if not dataclasses.is_dataclass(cls):
        return False
    hints = typing.get_type_hints(cls)
    if path[0] not in hints:
        return False
    if len(path) == 1:
        return True
    hint = hints[path[0]]
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return any(dataclass_has(m, path[1:]) for m in members if isinstance(m, type))


def unknown_flags(tool: str, sub: str | None, flags: list[str]) -> list[str]:
    known = known_flags(tool, sub)
    bad = []
    for flag in flags:
        if flag in known:
            continue
        # model.vqvae is one typed option (a VQVAEConfig): its fields are nested flags that
        # the help lists under --model.vqvae.help, not one by one.
        nested = flag.removeprefix("--model.vqvae.")
        if tool == "vq-train" and nested != flag and dataclass_has(VQVAEConfig, nested.split(".")):
            continue
        bad.append(flag)
    return bad


def test_the_docs_have_commands_of_every_tool() -> None:
    tools = {tool for text in documents().values() for tool, *_ in invocations(text)}
    assert tools == {"vq-serve", "vq-train", "vq-export", "vq-import", "vq-lpips-weights"}


def test_every_documented_flag_exists() -> None:
    problems = []
    count = 0
    for name, text in documents().items():
        for tool, sub, flags, command in invocations(text):
            count += len(flags)
            problems += [
                f"{name}: {flag} ({tool}{' ' + sub if sub else ''}) in: {command}"
                for flag in unknown_flags(tool, sub, flags)
            ]
    assert count > 50, f"found only {count} flags: the command parsing missed most"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Serve it: `vq-serve --model-dir DIR` (see the docs).", ["--model-dir"]),
        ("```bash\nvq-train fit --config c.yaml \\\n  --data.rooot x\n```", ["--data.rooot"]),
        ("`vq-train fit --model.vqvae.quantizer.levelz [8]`", ["--model.vqvae.quantizer.levelz"]),
        ("`.venv/bin/vq-export --onnx a b && curl --fail x`", []),
        ("`python -m train.cli predict --data.predict_root d --model.vqvae.f 8`", []),
        ("`vq-lpips-weights --sdist x.tar.gz`", []),
        ("`.venv/bin/vq-lpips-weights --offline`", ["--offline"]),
    ],
)
def test_a_wrong_flag_is_caught(line: str, expected: list[str]) -> None:
    found = [
        flag
        for tool, sub, flags, _ in invocations(line)
        for flag in unknown_flags(tool, sub, flags)
    ]
    assert found == expected
