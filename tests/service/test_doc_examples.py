"""Every example of docs/api.md and of the README's Serving section, run as written.

The server is the README's own ``vq-serve`` command (only the port changed) with the
shipped model; the photos are the ones the docs' setup command writes (scikit-image's
chelsea and coffee), so the examples meet real photographs, not tiny test images.
Commands run in a scratch directory laid out like the repository root (``.venv`` and
``models`` link to the real ones). Not run: ``docker`` (no Docker daemon where the tests
run; hadolint checks the Dockerfile) and api.md's other ``vq-serve`` lines, which are
parsed by vq-serve's own parser instead (one binds 0.0.0.0, one names a placeholder path).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.cli import build_parser, settings_from_args
from tests.service.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
MAX_ARG_STRLEN = 128 * 1024  # Linux's limit on one command-line argument


@dataclass
class Example:
    source: str  # file and block number, for messages
    command: str
    shown: str  # output the doc shows after a "$ " prompt, if any


def _section(text: str, heading: str | None) -> str:
    if heading is None:
        return text
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def _commands(block: str, source: str) -> list[Example]:
    joined = re.sub(r"\\\n\s*", "", block)  # backslash continuations
    lines = [line for line in joined.splitlines() if line.strip()]
    if any(line.startswith("$ ") for line in lines):  # a transcript: prompts, then output
        examples, command, shown = [], None, []
        for line in lines:
            if line.startswith("$ "):
                if command is not None:
                    examples.append(Example(source, command, "\n".join(shown)))
                command, shown = line[2:], []
            else:
                shown.append(line)
        assert command is not None
        return [*examples, Example(source, command, "\n".join(shown))]
    return [Example(source, line, "") for line in lines if not line.lstrip().startswith("#")]


def doc_examples() -> tuple[list[Example], list[str]]:
    """(shell examples in document order, python blocks) of docs/api.md and the README's
    Serving section."""
    shell: list[Example] = []
    python: list[str] = []
    for name, heading in (("README.md", "## Serving"), ("docs/api.md", None)):
        text = _section((REPO / name).read_text(encoding="utf-8"), heading)
        for i, block in enumerate(_blocks(text, "bash")):
            shell += _commands(block, f"{name} bash block {i}")
        python += _blocks(text, "python")
    return shell, python


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch 'repository root': .venv and models/ link to the real ones."""
    if shutil.which("curl") is None:
        if os.environ.get("CI"):
            pytest.fail("curl is not installed; the documented examples need it")
        pytest.skip("curl is not installed")
    root = tmp_path_factory.mktemp("docs-root")
    (root / ".venv").symlink_to(Path(sys.prefix))  # the virtualenv running the tests
    (root / "models").symlink_to(REPO / "models")
    if not (root / ".venv" / "bin" / "vq-serve").exists():
        pytest.skip(f"no vq-serve script in {sys.prefix} (install the project)")
    return root


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[str]:
    """The README's vq-serve command on a free port."""
    [command] = [e.command for e in doc_examples()[0] if "--host 127.0.0.1" in e.command]
    port = free_port()
    command = re.sub(r"--port \d+", f"--port {port}", command)
    log = (workdir / "vq-serve.log").open("wb")
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=workdir, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (workdir / "vq-serve.log").read_text()
            assert time.monotonic() < deadline, (workdir / "vq-serve.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def _bash(command: str, workdir: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=workdir,
        env={**os.environ, "URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_documented_example_runs_on_real_photos(workdir: Path, server: str) -> None:
    shell, python = doc_examples()
    outputs: dict[str, str] = {}
    for example in shell:
        command = example.command
        if command.startswith("docker "):
            continue
        if command.startswith(".venv/bin/vq-serve"):
            # Parsed, not started (the README's own line is the running server).
            args = build_parser().parse_args(shlex.split(command, comments=True)[1:])
            settings_from_args(args)
            continue
        if re.fullmatch(r"URL=\S+", command):
            continue  # the address: the test's server is given as $URL instead
        proc = _bash(command, workdir, server)
        assert proc.returncode == 0, f"{example.source}: {command}\n{proc.stderr[-2000:]}"
        out = proc.stdout
        if example.shown:  # a transcript: the output must be what the doc shows
            assert json.loads(out) == json.loads(example.shown), (command, out)
        elif out.startswith("{"):
            body = json.loads(out)
            assert "code" not in body or "detail" not in body, (command, body)  # no error
        outputs[command] = out

    # The base64 example meets a photo whose base64 is too long for an argument, and gives
    # the same codes as the multipart upload of the same file.
    assert len((workdir / "cat.png").read_bytes()) * 4 / 3 > MAX_ARG_STRLEN
    tokenized = {c: json.loads(o) for c, o in outputs.items() if "/v1/tokenize" in c}
    [multipart] = [b for c, b in tokenized.items() if "files=@cat.png" in c]
    [from_json] = [b for c, b in tokenized.items() if "base64" in c]
    assert from_json["results"][0] == multipart["results"][0]
    api = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    shown = re.findall(r'"grid": \[(\d+), (\d+)\], "image_size": \[(\d+), (\d+)\]', api)
    got = [(*r["grid"], *r["image_size"]) for r in multipart["results"]]
    assert [tuple(map(int, s)) for s in shown] == got  # the doc shows the real answer
    codes = re.findall(r'"codes": \[\[(\d+), (\d+), (\d+), (\d+), \.\.\.\]', api)
    first = [r["codes"][0][:4] for r in multipart["results"]]
    [info] = [json.loads(o) for c, o in outputs.items() if c.endswith('/v1/models/default"')]
    if info["precision"] == "bf16":  # the samples were made at bf16, where it is native
        assert [list(map(int, c)) for c in codes] == first, first  # its codes too
    with Image.open(workdir / "out.png") as png:
        assert png.format == "PNG" and png.size == (3 * 8, 2 * 8)  # codes [[1,2,3],[4,5,6]]
    [usage] = [json.loads(o) for c, o in outputs.items() if c.endswith('/usage"')]
    assert usage["tokens_seen"] > 0

    assert python, "docs/api.md has a Python client example"
    for code in python:
        code = code.replace("http://127.0.0.1:8000", server)
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=workdir,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{code}\n{proc.stderr[-2000:]}"
        assert proc.stdout.strip(), code
