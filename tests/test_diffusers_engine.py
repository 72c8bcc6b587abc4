"""The diffusers engine with real pipeline code: tiny Wan models built in code,
saved with `save_pretrained`, loaded through the engine's normal path, on CPU.

Every generation is about 64 px and 9 frames (size scale 1/8, 8 fps, 1 s), a
fraction of a second on two cores. Frames are compared exactly: before
encoding, or after the repeatable encoder (x264 with mbtree=0).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from numpy.typing import NDArray
from typer.testing import CliRunner

from imagine.cli.main import app as cli_app
from imagine.engines.base import GenerationJob, JobControl
from imagine.engines.diffusers.check import ModelDirectoryError, inspect_model_dir
from imagine.engines.diffusers.config import DiffusersConfig
from imagine.engines.diffusers.engine import PHASES, DiffusersEngine
from imagine.engines.diffusers.families import RenderArgs
from imagine.engines.diffusers.mapping import apply_mode, frame_count, size_table
from imagine.engines.diffusers.tiny import build_tiny_wan
from imagine.engines.diffusers.wan import NEGATIVE_PROMPT
from imagine.engines.registry import create_engine
from imagine.failures import Cancelled, FailureReason, TaskFailure
from imagine.media.images import InputImage
from imagine.media.video import probe_mp4
from imagine.observability.metrics import REGISTRY
from imagine.settings import SettingsError, load_settings

from conftest import RunningServer
from helpers import balance_and_ledger, image_bytes, run_db, wait_for_task
from processes import ImagineProcess, ServeProcess

Frames = NDArray[np.uint8]
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# Server settings for the tiny model: 480p 1:1 becomes 64x64, 16:9 96x64, 1 s 9 frames.
TINY: dict[str, Any] = {
    "engine": "diffusers",
    "diffusers_size_scale": 0.125,
    "diffusers_fps": 8,
    "diffusers_steps": 2,
}
STEPS = 4


@pytest.fixture(scope="session")
def ti2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-ti2v", "ti2v-5b")


@pytest.fixture(scope="session")
def t2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-t2v", "t2v-1.3b")


def tiny_config(model_dir: Path, **overrides: Any) -> DiffusersConfig:
    values: dict[str, Any] = {"size_scale": 0.125, "fps": 8, "steps": STEPS}
    values.update(overrides)
    return DiffusersConfig(model_dir=model_dir, **values)


def new_engine(model_dir: Path, **overrides: Any) -> DiffusersEngine:
    engine = DiffusersEngine(tiny_config(model_dir, **overrides))
    engine.prepare()
    return engine


@pytest.fixture(scope="module")
def engine(ti2v_dir: Path) -> DiffusersEngine:
    return new_engine(ti2v_dir)


def make_job(
    seed: int | None = 1,
    *,
    ratio: str = "1:1",
    prompt: str = "a red fox in the snow",
    mode: str = "normal",
    image: bytes | None = None,
    duration: int = 1,
) -> GenerationJob:
    images = (InputImage(image, "image/png", 80, 60),) if image is not None else ()
    return GenerationJob(
        task_id="task_test",
        prompt=prompt,
        mode=mode,
        ratio=ratio,
        resolution="480p",
        width=0,
        height=0,
        duration=duration,
        seed=seed,
        images=images,
        fps=8,
    )


def render(engine: DiffusersEngine, job: GenerationJob) -> Frames:
    return engine.render(job, lambda _f: None, lambda: False)


def decode_frames(path: Path) -> Frames:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames).astype(np.uint8)


def data_url(color: tuple[int, int, int]) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(color, size=(80, 60))).decode()


def download(server: RunningServer, url: str, target: Path) -> Path:
    with server.client() as client:
        answer = client.get(url)
    assert answer.status_code == 200, answer.text
    target.write_bytes(answer.content)
    return target


def submit(client: httpx.Client, **body: Any) -> str:
    body = {"prompt": "a red fox in the snow", "duration": 1, **body}
    answer = client.post("/v1/generate", json=body)
    assert answer.status_code == 200, answer.text
    task_id: str = answer.json()["data"]["task_id"]
    return task_id


# --- mapping and inspection (no weights) ------------------------------------------------


def test_sizes_land_on_the_model_grid_near_the_design_table(ti2v_dir: Path, t2v_dir: Path) -> None:
    ti2v = inspect_model_dir(ti2v_dir).spec
    t2v = inspect_model_dir(t2v_dir).spec
    assert ti2v is not None and t2v is not None
    assert (ti2v.grid, ti2v.fps, t2v.grid, t2v.fps) == (32, 24, 16, 16)
    sizes = size_table(ti2v)
    # TI2V-5B's own sizes for the DESIGN table's 1280x720 and 848x480.
    assert sizes[("16:9", "720p")] == (1280, 704)
    assert sizes[("9:16", "720p")] == (704, 1280)
    assert sizes[("16:9", "480p")] == (832, 480)
    assert sizes[("1:1", "720p")] == (704, 704)
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in sizes.values())
    wan21 = size_table(t2v)
    assert wan21[("16:9", "480p")] == (848, 480)
    assert wan21[("16:9", "720p")] == (1280, 720)
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in wan21.values())
    assert size_table(ti2v, scale=0.125)[("1:1", "480p")] == (64, 64)
    # 4k+1 frames at the model's frame rate.
    assert frame_count(5, 24, 4) == 121
    assert frame_count(5, 16, 4) == 81
    assert frame_count(1, 8, 4) == 9
    assert frame_count(6, 24, 4) == 145


def test_modes_are_documented_prompt_presets() -> None:
    assert apply_mode("custom", "a cat", NEGATIVE_PROMPT) == ("a cat", "")
    assert apply_mode("normal", "a cat", NEGATIVE_PROMPT) == ("a cat", NEGATIVE_PROMPT)
    prompt, negative = apply_mode("fun", "a cat", NEGATIVE_PROMPT)
    assert prompt.startswith("a cat, playful") and negative.startswith(NEGATIVE_PROMPT + ", ")


def test_models_check_reports_family_variant_support_and_what_is_missing(
    ti2v_dir: Path, t2v_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli_app, ["models", "check", str(ti2v_dir)])
    assert ok.exit_code == 0, ok.output
    assert "Wan2.2-TI2V-5B layout [wan2.2-ti2v]" in ok.output
    assert "text-to-video, image-to-video (one image)" in ok.output
    assert "16:9 832x480" in ok.output and "16:9 1280x704" in ok.output
    assert "status      ready" in ok.output

    text_only = runner.invoke(cli_app, ["models", "check", str(t2v_dir), "--json"])
    report = json.loads(text_only.output)
    assert report["ok"] and report["supports"] == ["text-to-video"] and report["fps"] == 16

    broken = tmp_path / "broken"
    shutil.copytree(ti2v_dir, broken)
    for weights in (broken / "vae").glob("*.safetensors"):
        weights.unlink()
    shutil.rmtree(broken / "text_encoder")
    answer = runner.invoke(cli_app, ["models", "check", str(broken)])
    assert answer.exit_code == 1
    assert "missing     vae: no weights" in answer.output
    assert "missing     text_encoder: missing" in answer.output
    answer = runner.invoke(cli_app, ["models", "check", str(broken), "--json"])
    assert json.loads(answer.output)["missing"] == ["text_encoder", "vae"]

    lfs = tmp_path / "lfs"
    shutil.copytree(ti2v_dir, lfs)
    for weights in (lfs / "transformer").glob("*.safetensors"):
        weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    assert "Git LFS pointers" in runner.invoke(cli_app, ["models", "check", str(lfs)]).output

    two_experts = tmp_path / "a14b"
    shutil.copytree(ti2v_dir, two_experts)
    index = json.loads((two_experts / "model_index.json").read_text())
    index["transformer_2"] = ["diffusers", "WanTransformer3DModel"]
    (two_experts / "model_index.json").write_text(json.dumps(index))
    answer = runner.invoke(cli_app, ["models", "check", str(two_experts)])
    assert answer.exit_code == 1 and "two-expert Wan2.2 models" in answer.output

    answer = runner.invoke(cli_app, ["models", "check", str(tmp_path)])
    assert answer.exit_code == 1 and "model_index.json is missing" in answer.output


def test_a_broken_model_directory_is_refused_at_start_up_naming_the_component(
    ti2v_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ti2v_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelDirectoryError, match=r"vae: missing"):
        DiffusersEngine(DiffusersConfig(model_dir=broken))
    settings = load_settings(data_dir=tmp_path / "data", engine="diffusers", diffusers_model=broken)
    with pytest.raises(SettingsError, match=r"vae: missing"):
        create_engine(settings)
    with pytest.raises(SettingsError, match=r"needs a model directory"):
        create_engine(load_settings(data_dir=tmp_path / "data", engine="diffusers"))

    corrupt = tmp_path / "corrupt"
    shutil.copytree(ti2v_dir, corrupt)
    for weights in (corrupt / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"\x00" * 4096)
    with pytest.raises(SettingsError, match=r"cannot load .*corrupt"):
        DiffusersEngine(DiffusersConfig(model_dir=corrupt)).prepare()

    runner = CliRunner()
    data = str(tmp_path / "data")
    for command in ("serve", "worker"):
        answer = runner.invoke(cli_app, [command, "--model", str(broken), "--data-dir", data])
        assert answer.exit_code == 2, answer.output
        assert re.search(r"vae:\s+missing", answer.output), answer.output


# --- the engine -------------------------------------------------------------------------


def test_progress_is_monotonic_through_the_phases_and_reaches_one(
    engine: DiffusersEngine, tmp_path: Path
) -> None:
    seen: list[float] = []
    encodes = _sample("imagine_engine_stage_seconds_count", engine="diffusers", stage="encode")
    engine.run(make_job(), tmp_path / "out.mp4", seen.append, lambda: False)
    assert seen == sorted(seen) and seen[-1] == 1.0
    # The MP4 writing is timed as the engine's `encode` stage.
    assert _sample("imagine_engine_stage_seconds_count", engine="diffusers", stage="encode") == (
        encodes + 1
    )
    low, high = PHASES["denoise"]
    steps = [f for f in seen if low < f <= high]
    assert len(steps) == STEPS  # one report per denoising step
    assert any(f > PHASES["write"][0] for f in seen[:-1])  # frames written one by one
    video = probe_mp4(tmp_path / "out.mp4")
    assert (video.width, video.height, video.frames, video.fps) == (64, 64, 9, 8.0)


def test_the_same_seed_gives_the_same_video_and_another_seed_another(
    engine: DiffusersEngine, tmp_path: Path
) -> None:
    first = render(engine, make_job(seed=11))
    assert first.shape == (9, 64, 64, 3) and first.std() > 0
    assert np.array_equal(first, render(engine, make_job(seed=11)))
    assert not np.array_equal(first, render(engine, make_job(seed=12)))
    # And the MP4 is byte-identical: the encoder is repeatable too.
    paths = [
        asyncio.run(engine.generate(make_job(seed=11), tmp_path / name, JobControl()))[0]
        for name in ("a", "b")
    ]
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_cancel_mid_denoise_stops_within_a_step_and_the_next_task_is_a_fresh_run(
    engine: DiffusersEngine, ti2v_dir: Path
) -> None:
    low, high = PHASES["denoise"]
    step = (high - low) / STEPS
    seen: list[float] = []
    stop = threading.Event()

    def on_progress(fraction: float) -> None:
        seen.append(fraction)
        if fraction >= low + 2 * step - 1e-9:
            stop.set()  # asked to stop after the second of four steps

    for job in (make_job(seed=5), make_job(seed=5, image=image_bytes((200, 40, 40)))):
        seen.clear()
        stop.clear()
        with pytest.raises(Cancelled):
            engine.render(job, on_progress, stop.is_set)
        assert max(seen) < low + 3 * step - 1e-9  # no third step, no decode

    after = render(engine, make_job(seed=5))
    fresh = render(new_engine(ti2v_dir), make_job(seed=5))
    assert np.array_equal(after, fresh)


async def test_a_time_limit_aborts_within_one_step_and_frees_the_pipeline(
    engine: DiffusersEngine, tmp_path: Path
) -> None:
    reported: list[float] = []

    def slow_steps(fraction: float) -> None:
        reported.append(time.monotonic())
        time.sleep(0.15)

    control = JobControl(on_progress=slow_steps)
    with pytest.raises(TimeoutError):  # as the worker's task time limit does
        await asyncio.wait_for(engine.generate(make_job(seed=3), tmp_path / "slow", control), 0.3)
    cut = time.monotonic()
    control.cancel_event.set()
    # The next task waits for the pipeline, which the abandoned thread frees at its next step.
    path = (await engine.generate(make_job(seed=3), tmp_path / "next", JobControl()))[0]
    assert len([t for t in reported if t > cut]) <= 1
    assert not (tmp_path / "slow" / "video.mp4").exists()
    again = (await engine.generate(make_job(seed=3), tmp_path / "again", JobControl()))[0]
    assert path.read_bytes() == again.read_bytes()


def test_out_of_memory_fails_the_task_and_the_engine_keeps_serving(
    engine: DiffusersEngine,
) -> None:
    low = PHASES["denoise"][0]

    def out_of_memory(fraction: float) -> None:
        if fraction > low:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    counted = _sample("imagine_gpu_oom_total")
    with pytest.raises(TaskFailure) as failure:
        engine.render(make_job(seed=8), out_of_memory, lambda: False)
    assert _sample("imagine_gpu_oom_total") == counted + 1
    assert failure.value.reason is FailureReason.BUILD_FAILED
    assert not failure.value.retryable and "out of GPU memory" in failure.value.detail
    assert np.array_equal(render(engine, make_job(seed=8)), render(engine, make_job(seed=8)))


def test_two_renders_at_once_on_one_pipeline_both_match_serial_runs(
    engine: DiffusersEngine,
) -> None:
    jobs = [make_job(seed=21), make_job(seed=22, image=image_bytes((30, 160, 220)))]
    serial = [render(engine, job) for job in jobs]
    results: list[Frames | None] = [None, None]

    def run(index: int) -> None:
        results[index] = render(engine, jobs[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for got, expected in zip(results, serial, strict=True):
        assert got is not None and np.array_equal(got, expected)


def test_image_to_video_uses_the_image_and_text_only_models_refuse_images(
    engine: DiffusersEngine, t2v_dir: Path
) -> None:
    red = render(engine, make_job(seed=4, image=image_bytes((220, 20, 20)), ratio="16:9"))
    blue = render(engine, make_job(seed=4, image=image_bytes((20, 20, 220)), ratio="16:9"))
    assert red.shape == (9, 64, 96, 3) and not np.array_equal(red, blue)
    with pytest.raises(TaskFailure) as failure:
        render(engine, make_job(image=b"not an image"))
    assert failure.value.reason is FailureReason.FILE_TYPE
    text_only = DiffusersEngine(tiny_config(t2v_dir))
    assert text_only.capabilities.max_images == 0 and text_only.fps == 8


def test_speed_and_memory_settings_run_on_cpu_and_keep_results_exact(
    engine: DiffusersEngine, ti2v_dir: Path, tmp_path: Path
) -> None:
    jobs = [make_job(seed=31), make_job(seed=32, image=image_bytes((90, 200, 90)))]
    expected = [render(engine, job) for job in jobs]

    # Model CPU offload (its hooks move between the text- and image-to-video
    # pipelines) and group offload, VAE tiling off: the same numbers as resident.
    offload = new_engine(ti2v_dir, memory="offload", vae_tiling=False, attention="native")
    for job, frames in zip([*jobs, jobs[0]], [*expected, expected[0]], strict=True):
        assert np.array_equal(render(offload, job), frames)
    grouped = new_engine(ti2v_dir, memory="group-offload", vae_tiling=False)
    assert np.array_equal(render(grouped, jobs[0]), expected[0])

    # Step caches change the numbers a little, but stay repeatable and cancellable.
    ratios = tmp_path / "mag.json"
    ratios.write_text(json.dumps([1.0, 0.98, 0.97, 0.96]))
    mag = DiffusersConfig.from_settings(
        load_settings(
            diffusers_model=ti2v_dir, diffusers_step_cache="mag", diffusers_mag_ratios=ratios
        )
    ).mag_ratios
    for cache in ({"step_cache": "first-block", "cache_threshold": 0.5}, {"step_cache": "mag"}):
        cached = new_engine(ti2v_dir, mag_ratios=mag, vae_tiling=True, **cache)
        first = render(cached, jobs[0])
        with pytest.raises(Cancelled):
            cached.render(jobs[0], lambda _f: None, lambda: True)
        assert first.shape == expected[0].shape
        assert np.array_equal(render(cached, jobs[0]), first)

    with pytest.raises(SettingsError, match="_hub"):
        load_settings(diffusers_attention="flash_hub")
    with pytest.raises(SettingsError, match="unusable"):
        new_engine(ti2v_dir, attention="flash")  # flash-attn is not installed here
    with pytest.raises(ValueError, match="MAG_RATIOS"):
        tiny_config(ti2v_dir, step_cache="mag")


def test_compile_warms_up_every_allowed_shape_before_serving(
    engine: DiffusersEngine, ti2v_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = DiffusersEngine(
        tiny_config(
            ti2v_dir,
            compile=True,
            compile_backend="eager",  # dynamo's tracing without inductor's minutes on CPU
            ratios=("1:1", "16:9"),
            resolutions=("480p",),
            max_duration=1,
        )
    )
    assert compiled.warmup_shapes() == [(64, 64, 9), (96, 64, 9)]
    warmed: list[tuple[int, int, int]] = []
    call = compiled.adapter.call

    def spy(pipeline: Any, args: RenderArgs) -> Any:
        warmed.append((args.width, args.height, args.frames))
        return call(pipeline, args)

    monkeypatch.setattr(compiled.adapter, "call", spy)  # adapters are shared: undone after
    compiled.prepare()
    assert warmed == compiled.warmup_shapes()
    assert np.array_equal(render(compiled, make_job(seed=9)), render(engine, make_job(seed=9)))

    # With a step cache the blocks compile with a graph break (the cache's decision).
    cached = new_engine(
        ti2v_dir,
        compile=True,
        compile_backend="eager",
        step_cache="first-block",
        ratios=("1:1",),
        resolutions=("480p",),
        max_duration=1,
        steps=2,
    )
    assert np.array_equal(render(cached, make_job(seed=9)), render(cached, make_job(seed=9)))


# --- through the real server ------------------------------------------------------------


def test_text_and_image_to_video_end_to_end(
    server_factory: Callable[..., RunningServer], ti2v_dir: Path, tmp_path: Path
) -> None:
    server = server_factory(diffusers_model=ti2v_dir, **TINY)
    issued = server.new_key()
    with server.client(issued.key) as client:
        text = submit(client, ratio="16:9", duration=2, seed=7)
        progress: list[int] = []
        while (data := client.get("/v1/status", params={"task_id": text}).json()["data"])[
            "status"
        ] not in ("completed", "failed"):
            progress.append(int(data.get("progress") or 0))
            time.sleep(0.02)
        image = submit(
            client, ratio="1:1", duration=1, images=[data_url((220, 120, 20))], mode="fun"
        )
        image_data = wait_for_task(client, image)

    assert data["status"] == "completed", data
    assert data["engine"] == "diffusers" and data["consumed_credits"] == 40
    assert progress == sorted(progress) and data["progress"] == 100
    video = probe_mp4(download(server, data["response"][0], tmp_path / "t2v.mp4"))
    assert (video.width, video.height, video.frames, video.fps) == (96, 64, 17, 8.0)
    assert video.codec == "h264" and video.pix_fmt == "yuv420p"

    assert image_data["status"] == "completed", image_data
    video = probe_mp4(download(server, image_data["response"][0], tmp_path / "i2v.mp4"))
    assert (video.width, video.height, video.frames) == (64, 64, 9)


@SQLITE_ONLY
def test_submit_refuses_what_the_model_cannot_do(
    server_factory: Callable[..., RunningServer], ti2v_dir: Path, t2v_dir: Path
) -> None:
    server = server_factory(
        diffusers_model=ti2v_dir,
        diffusers_ratios="1:1,16:9",
        diffusers_resolutions="480p",
        diffusers_max_duration=2,
        **TINY,
    )
    issued = server.new_key()
    refused: list[tuple[dict[str, Any], str]] = [
        ({"ratio": "9:16"}, "The ratio parameter must be one of: 1:1, 16:9 at 480p"),
        ({"resolution": "720p"}, "The resolution parameter must be one of: 480p"),
        ({"duration": 3}, "The duration parameter must be an integer from 1 to 2"),
        ({"images": [data_url((1, 2, 3))] * 2}, "The images parameter accepts at most 1 image"),
    ]
    with server.client(issued.key) as client:
        for extra, message in refused:
            answer = client.post("/v1/generate", json={"prompt": "a fox", "duration": 1, **extra})
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"] == "INVALID_REQUEST"
            assert answer.json()["message"] == f"Invalid request: {message}"
    assert run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id)) == (
        1000,
        1000,
    )

    server.stop()  # the next server shares its database: only its own worker may claim
    text_only = server_factory(diffusers_model=t2v_dir, **TINY)
    issued = text_only.new_key()
    with text_only.client(issued.key) as client:
        answer = client.post(
            "/v1/generate", json={"prompt": "a fox", "images": [data_url((1, 2, 3))]}
        )
        assert answer.status_code == 400
        assert "this model generates from text only" in answer.json()["message"]
        data = wait_for_task(client, submit(client, ratio="16:9", seed=1))
    assert data["status"] == "completed", data
    video = probe_mp4(download(text_only, data["response"][0], text_only.settings.data_dir / "v"))
    assert (video.width, video.height, video.frames) == (112, 64, 9)  # a 16 px grid


@SQLITE_ONLY
def test_two_tasks_together_on_a_two_slot_worker_are_both_correct(
    server_factory: Callable[..., RunningServer], ti2v_dir: Path, tmp_path: Path
) -> None:
    server = server_factory(diffusers_model=ti2v_dir, workers=2, **{**TINY, "diffusers_steps": 6})
    issued = server.new_key()
    bodies: list[dict[str, Any]] = [
        {"seed": 1, "ratio": "16:9"},
        {"seed": 2, "prompt": "a blue whale", "images": [data_url((20, 60, 200))]},
    ]

    def frames_of(task_ids: list[str], tag: str) -> list[Frames]:
        out = []
        for number, task_id in enumerate(task_ids):
            data = wait_for_task(client, task_id)
            assert data["status"] == "completed", data
            path = download(server, data["response"][0], tmp_path / f"{tag}{number}.mp4")
            out.append(decode_frames(path))
        return out

    with server.client(issued.key) as client:
        together = frames_of([submit(client, **body) for body in bodies], "together")
        alone = [
            frames_of([submit(client, **body)], f"alone{i}")[0] for i, body in enumerate(bodies)
        ]
    for got, expected in zip(together, alone, strict=True):
        assert np.array_equal(got, expected)
    assert not np.array_equal(together[0][:, :64, :64], together[1][:, :64, :64])


@SQLITE_ONLY
def test_out_of_memory_fails_the_task_with_a_refund_and_the_worker_keeps_serving(
    server_factory: Callable[..., RunningServer], ti2v_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory_once(app: FastAPI) -> None:
        engine: DiffusersEngine = app.state.services.engine
        adapter = engine.adapter
        call = adapter.call
        raised = threading.Event()

        def flaky(pipeline: Any, args: RenderArgs) -> Any:
            if not raised.is_set() and args.decode:
                raised.set()
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return call(pipeline, args)

        monkeypatch.setattr(adapter, "call", flaky)

    server = server_factory(diffusers_model=ti2v_dir, configure_app=out_of_memory_once, **TINY)
    issued = server.new_key()
    with server.client(issued.key) as client:
        failed = wait_for_task(client, submit(client, seed=1))
        completed = wait_for_task(client, submit(client, seed=1))
    assert failed["status"] == "failed", failed
    assert failed["error_message"] == "grok imagine build failed"
    assert failed["consumed_credits"] == 0
    assert completed["status"] == "completed", completed
    assert run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id)) == (
        960,
        960,
    )


def test_imagine_serve_with_the_tiny_model_serves_the_contract(
    ti2v_dir: Path, tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    env = {
        "IMAGINE_DIFFUSERS_SIZE_SCALE": "0.125",
        "IMAGINE_DIFFUSERS_FPS": "8",
        "IMAGINE_DIFFUSERS_STEPS": "2",
    }
    serving = ServeProcess(
        tmp_path / "data", "--engine", "diffusers", "--model", str(ti2v_dir), env=env
    )
    processes.append(serving)
    key = re.search(r"API key \(shown once, keep it\): (imk_\w+)", serving.output())
    assert key, serving.output()
    assert "with the diffusers engine" in serving.output()
    with httpx.Client(
        base_url=serving.url, headers={"Authorization": f"Bearer {key.group(1)}"}, timeout=30
    ) as client:
        data = wait_for_task(client, submit(client, ratio="9:16", seed=3))
        assert data["status"] == "completed", data
        (tmp_path / "out.mp4").write_bytes(client.get(data["response"][0]).content)
    video = probe_mp4(tmp_path / "out.mp4")
    assert (video.width, video.height, video.frames, video.fps) == (64, 96, 9, 8.0)


def _sample(name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels, in this process."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
