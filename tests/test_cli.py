"""`python -m inference generate` end to end, as a subprocess, against the ModelsLab fake."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from modelslab_fake import API_KEY, FakeModelsLab, Reply, png_bytes
from PIL import Image

from inference import cli as cli_module
from inference.images import read_parameters
from inference.request import MAX_SIDE, MIN_SIDE, SAFETY_CHECKER_TYPES, SCHEDULERS, STEP_CHOICES

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelsLab]:
    async with FakeModelsLab() as server:
        yield server


async def cli(fake: FakeModelsLab, cwd: Path, *args: str, **env: str) -> Run:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MODELSLAB_", "IMG2IMG_"))
    }
    environ.update(
        PYTHONPATH=str(ROOT),
        MODELSLAB_BASE_URL=fake.base_url,
        MODELSLAB_API_KEY=API_KEY,
        MODELSLAB_REQUEST_TIMEOUT="5",
        MODELSLAB_JOB_TIMEOUT="30",
        MODELSLAB_MAX_RETRIES="1",
        IMG2IMG_ALLOW_PRIVATE_URLS="true",
        IMG2IMG_BACKEND="modelslab",
    )
    environ.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "inference",
        "generate",
        *args,
        cwd=cwd,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    run = Run(process.returncode, out.decode(), err.decode())
    assert API_KEY not in run.stdout + run.stderr, "the key was printed"
    return run


@pytest.fixture
def init_file(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes(96, 64))
    return path


async def test_generate_writes_images_and_prints_the_result(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    fake.polls = 2
    out = tmp_path / "out"
    run = await cli(
        fake,
        tmp_path,
        "--backend",
        "modelslab",
        "--init-image",
        str(init_file),
        "--prompt",
        "a cat in a hat",
        "--negative-prompt",
        "blurry",
        "--samples",
        "2",
        "--num-inference-steps",
        "31",
        "--safety-checker",
        "no",
        "--seed",
        "1234",
        "--track-id",
        "cli-1",
        "--out",
        str(out),
        IMG2IMG_BACKEND="local",  # the flag wins
    )
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "success" and result["track_id"] == "cli-1"
    assert result["meta"]["seed"] == [1234, 1235] and "key" not in result["meta"]
    assert result["nsfw_content_detected"] == [False, False]
    assert [Path(p).name for p in result["output"]] == [f"{result['id']}-{i}.png" for i in (0, 1)]
    for path in result["output"]:
        with Image.open(path) as image:
            assert image.size == (512, 344)
        with open(path, "rb") as written:  # noqa: ASYNC230 - a small local file
            assert "a cat in a hat" in (read_parameters(written.read()) or "")
    assert "queued" in run.stderr and "running" in run.stderr
    body = fake.submits[0].body
    assert body is not None and body["negative_prompt"] == "blurry" and body["samples"] == 2
    assert body["num_inference_steps"] == 31 and body["base64"] == "yes"


async def test_request_file_with_flags_overriding_and_a_url_init_image(
    fake: FakeModelsLab, tmp_path: Path
) -> None:
    url = fake.add_input(png_bytes(64, 64))
    request = tmp_path / "body.json"
    body = {
        "prompt": "from the file",
        "samples": "1",
        "strength": "0.5",
        "init_image": url,
        "safety_checker": "no",
    }
    request.write_text(json.dumps(body))
    run = await cli(
        fake, tmp_path, "--request", str(request), "--strength", "0.9", "--out", str(tmp_path)
    )
    assert run.code == 0, run.stderr
    sent = fake.submits[0].body
    assert sent is not None and sent["prompt"] == "from the file" and sent["strength"] == 0.9
    # the URL is fetched here and the bytes go inline: a URL may expire before the job runs
    assert sent["base64"] == "yes" and base64.b64decode(sent["init_image"]) == png_bytes(64, 64)
    output = json.loads(run.stdout)["output"]
    assert [Path(p).parent for p in output] == [tmp_path] and len(fake.output_gets()) == 1


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--num-inference-steps", "22"], "num_inference_steps"),
        (["--width", "100", "--samples", "9"], "width"),
        (["--scheduler", "Fancy"], "scheduler"),
    ],
)
async def test_invalid_flags_exit_2_naming_the_field(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path, args: list[str], names: str
) -> None:
    run = await cli(fake, tmp_path, "--init-image", str(init_file), "--prompt", "x", *args)
    assert run.code == 2 and names in run.stderr and "Traceback" not in run.stderr
    assert fake.submits == [] and run.stdout == ""


async def test_a_broken_init_image_exits_2(fake: FakeModelsLab, tmp_path: Path) -> None:
    broken = tmp_path / "notes.txt"
    broken.write_text("not an image")
    run = await cli(fake, tmp_path, "--init-image", str(broken), "--prompt", "x")
    assert run.code == 2 and "error:" in run.stderr and "Traceback" not in run.stderr
    assert fake.submits == []


async def test_an_unknown_model_exits_2(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    run = await cli(
        fake,
        tmp_path,
        "--init-image",
        str(init_file),
        "--prompt",
        "x",
        "--model-id",
        "no-such-model",
    )
    assert run.code == 2 and "no-such-model" in run.stderr


async def test_a_refused_key_exits_1_without_printing_it(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    fake.keys = {"sk-some-other-key"}
    run = await cli(fake, tmp_path, "--init-image", str(init_file), "--prompt", "x")
    assert run.code == 1 and "API key was refused" in run.stderr and run.stdout == ""


async def test_a_failing_api_exits_1(fake: FakeModelsLab, tmp_path: Path, init_file: Path) -> None:
    fake.script("img2img", *[Reply(503, "<html>Unavailable</html>", "text/html")] * 2)
    run = await cli(fake, tmp_path, "--init-image", str(init_file), "--prompt", "x")
    assert run.code == 1 and "HTML page" in run.stderr and "Traceback" not in run.stderr
    assert len(fake.submits) == 2


async def test_the_default_safety_checker_runs_the_real_detector(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    fake.nsfw = True  # the API's flag is honoured: censored, reported
    run = await cli(
        fake,
        tmp_path,
        *("--init-image", str(init_file), "--prompt", "x", "--safety-checker-type", "black"),
        *("--out", str(tmp_path)),
    )
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["nsfw_content_detected"] == [True] and result["meta"]["safety_checker"] == "yes"
    with Image.open(result["output"][0]) as image:
        assert image.convert("RGB").getpixel((100, 100)) == (0, 0, 0)


# -- --out, unexpected errors, settings and --help ---------------------------------------------


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores modes: then /sys)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / "probe").touch()
        except OSError:
            return candidate
        (candidate / "probe").unlink()
    pytest.skip("no unwritable folder on this machine")


async def test_an_out_that_is_a_file_is_refused_before_the_job(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    target = tmp_path / "taken"
    target.write_text("not a folder")
    run = await cli(
        fake, tmp_path, "--init-image", str(init_file), "--prompt", "x", "--out", str(target)
    )
    assert run.code == 2 and run.stdout == "" and fake.submits == []
    [line] = run.stderr.splitlines()
    assert line == f"error: --out {target} is a file, not a folder: give a folder for the images."


async def test_an_unwritable_out_is_refused_before_the_job(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    folder = unwritable_folder(tmp_path)
    run = await cli(
        fake, tmp_path, "--init-image", str(init_file), "--prompt", "x", "--out", str(folder)
    )
    assert run.code == 2 and run.stdout == "" and fake.submits == []
    [line] = run.stderr.splitlines()
    assert line.startswith(f"error: --out {folder} is not a writable folder")


async def test_invalid_settings_exit_2_with_one_line_each(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    bad = {"IMG2IMG_BATCH_SIZE": "many", "MODELSLAB_JOB_TIMEOUT": "soon"}
    run = await cli(fake, tmp_path, "--init-image", str(init_file), "--prompt", "x", **bad)
    assert run.code == 2 and fake.submits == []
    lines = run.stderr.splitlines()
    assert len(lines) == 2, run.stderr
    for name in bad:
        assert any(line.startswith(f"error: invalid settings: {name}:") for line in lines)


async def test_start_up_problems_exit_2_with_one_line_each(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    models = tmp_path / "models.toml"  # naming two local files that do not exist
    models.write_text('[models.a]\nsource = "a.safetensors"\n[models.b]\nsource = "b/"\n')
    local = {"IMG2IMG_MODELS": str(models), "IMG2IMG_DEVICE": "cpu"}
    args = ("--backend", "local", "--init-image", str(init_file), "--prompt", "x")
    run = await cli(fake, tmp_path, *args, **local)
    assert run.code == 2 and run.stdout == "" and fake.submits == []
    lines = run.stderr.splitlines()
    assert len(lines) == 2, run.stderr
    for line, name in zip(lines, "ab", strict=True):
        assert line.startswith(f"error: {models}: [models.{name}] source")
        assert "does not exist" in line


async def test_modelslab_without_a_key_exits_2_unless_the_request_brings_one(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    args = ("--init-image", str(init_file), "--prompt", "x", "--out", str(tmp_path))
    run = await cli(fake, tmp_path, *args, MODELSLAB_API_KEY="")
    assert run.code == 2 and fake.submits == []
    assert run.stderr.splitlines() == [
        "error: IMG2IMG_BACKEND=modelslab needs MODELSLAB_API_KEY (or MODELSLAB_API_KEYS)."
    ]
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"key": API_KEY, "safety_checker": "no"}))
    run = await cli(fake, tmp_path, *args, "--request", str(body), MODELSLAB_API_KEY="")
    assert run.code == 0, run.stderr
    assert len(fake.submits) == 1


async def test_broken_modelslab_settings_exit_2_at_start(
    fake: FakeModelsLab, tmp_path: Path, init_file: Path
) -> None:
    (tmp_path / "models.toml").write_text("default_model = [")
    args = ("--init-image", str(init_file), "--prompt", "x", "--out", str(tmp_path))
    env = {"MODELSLAB_BASE_URL": "modelslab.com", "MODELSLAB_WEBHOOK_LISTEN": "localhost"}
    run = await cli(fake, tmp_path, *args, **env)
    assert run.code == 2 and fake.requests == []
    lines = run.stderr.splitlines()
    assert len(lines) == 3, run.stderr
    assert lines[0].startswith("error: MODELSLAB_BASE_URL: 'modelslab.com' is not an http(s)")
    assert "MODELSLAB_WEBHOOK_LISTEN" in lines[1] and "models.toml" in lines[2]


def failing_backend(*args: object, **kwargs: object) -> None:
    raise RuntimeError("a bug\nspread over two lines")


def cli_main(tmp_path: Path, init_file: Path, *extra: str) -> int:
    args = ["generate", "--init-image", str(init_file), "--prompt", "x", "--out", str(tmp_path)]
    return cli_module.main([*args, *extra])


@pytest.fixture
def broken_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """main() in this process, with a backend factory that fails as a bug would."""
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    monkeypatch.setenv("IMG2IMG_BACKEND", "modelslab")
    monkeypatch.setenv("MODELSLAB_API_KEY", "sk-unused")  # passes the start-up checks
    monkeypatch.setattr(cli_module, "create_backend", failing_backend)
    inference_log = logging.getLogger("inference")
    level = inference_log.level
    yield
    inference_log.setLevel(level)  # --debug raises it


def test_an_unexpected_error_is_one_line_and_exit_1(
    broken_backend: None,
    tmp_path: Path,
    init_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(tmp_path, init_file) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: unexpected RuntimeError: a bug spread over two lines "
        "(run with --debug for the details)"
    ]


def test_debug_shows_the_traceback_of_an_unexpected_error(
    broken_backend: None,
    tmp_path: Path,
    init_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(tmp_path, init_file, "--debug") == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "failing_backend" in err
    assert err.splitlines()[-1].startswith("error: unexpected RuntimeError: a bug")


def test_help_lists_the_allowed_values_and_cites_only_files_in_the_repository(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_module.main(["generate", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"one of: {', '.join(map(str, STEP_CHOICES))}" in text
    assert f"one of: {', '.join(SCHEDULERS)}" in text and len(SCHEDULERS) == 15
    assert f"one of: {', '.join(SAFETY_CHECKER_TYPES)}" in text
    assert text.count(f"{MIN_SIDE}..{MAX_SIDE}; a multiple of 8") == 2  # width and height
    assert "--out DIR a writable folder" in text and "--debug" in text
    assert "CONTRACT" not in text
    cited = re.findall(r"[\w./-]+\.md", text)
    assert cited and all((ROOT / path).is_file() for path in cited), cited
