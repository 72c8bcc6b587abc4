"""The content policy on the real server: the preview engine, the real
classifiers, tasks submitted over HTTP. A refusal fails the task with the
contract's sentence, refunds it, stores no file, is recorded for the
operator (API and console) and costs no engine time when the inputs are
refused; ordinary prompts, including words naive lists catch, complete."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from imagine.accounts import service as accounts
from imagine.db.database import Database
from imagine.db.models import ModerationRefusal
from imagine.engines.base import Engine, GenerationJob, JobControl
from imagine.engines.preview import PreviewEngine
from imagine.media.images import InputImage
from imagine.media.video import sample_frames
from imagine.moderation.hashes import image_hash
from imagine.sizes import FRAME_SIZES

from conftest import RunningServer, make_settings, start_server
from helpers import balance_and_ledger, data_url, run_db, wait_for_task
from loopback_doubles import ModerationStub
from test_console import csrf_of, sign_in

REFUSED = "Inappropriate content, please try another prompt."
NETWORK = "Network error, please try again later."

BENIGN = [
    "a beautiful landscape with mountains at sunrise",
    "Scunthorpe United fans celebrating a goal",
    "a cocktail bar in Havana with live jazz",
    "assassin's creed trailer in the style of a renaissance painting",
    "a cat chasing a ball of yarn across a wooden floor",
    "time-lapse of cumulus clouds over the Essex countryside",
    "shiitake mushrooms sizzling in a cast iron pan",
    "a therapist's cosy office with plants and warm light",
    "a grapefruit cut in half, slow motion juice splash",
    "classic cars driving along the Amalfi coast",
    "a penguin colony in Antarctica, documentary style",
    "Sussex cricket team walking onto the pitch",
    "a cockatoo dancing to music on a perch",
    "Middlesex hospital in the 1950s, black and white film",
    "an analyst reviewing charts on three monitors",
    "a button-down shirt folding itself, stop motion",
    "kids flying kites on a windy beach",
    "a chef flipping pancakes in a busy kitchen",
    "a medieval castle under a thunderstorm",
    "a hummingbird drinking nectar, macro shot",
    "a drone shot over the rice terraces of Bali",
    "a steam train crossing a viaduct in the highlands",
    "astronauts floating inside the space station",
    "a fox cub playing in the snow",
    "a lighthouse on a cliff at dusk with crashing waves",
    "a robot painting a portrait in an art studio",
    "a coffee cup with steam rising on a rainy morning",
    "a basketball player dunking in slow motion",
    "a paper boat floating down a rain gutter",
    "the northern lights over a frozen lake",
    "a grandmother knitting a scarf by the fireplace",
    "a dragon flying over a misty mountain valley",
    "a bustling night market in Taipei",
    "a ballerina spinning on a stage with spotlights",
    "an old library with ladders and floating books",
    "a surfer riding a huge wave at sunset",
    "sunflowers swaying in a field in Tuscany",
    "a scientist pouring blue liquid into a flask",
    "a golden retriever catching a frisbee",
    "a city skyline timelapse from day to night",
    "a snail crawling on a wet leaf",
    "a jazz trio playing in a smoky club",
    "an octopus changing colours on a coral reef",
    "a hot air balloon festival at dawn",
    "a tiny house in the woods with smoke from the chimney",
    "a skateboarder doing a kickflip in a skatepark",
    "a potter shaping clay on a wheel",
    "a violinist playing on a bridge in Prague",
    "rain falling on a koi pond",
    "a cheerful snowman waving in a winter village",
]


class CountingEngine:
    """The preview engine, counting how often the worker calls it."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.calls = 0

    async def generate(self, job: GenerationJob, workdir: Path, control: JobControl) -> list[Path]:
        self.calls += 1
        return await self.inner.generate(job, workdir, control)


@dataclass
class Site:
    server: RunningServer
    engine: CountingEngine

    def client(self, key: str, **kwargs: Any) -> httpx.Client:
        return self.server.client(key, **kwargs)


def start_site(data_dir: Path, **settings: Any) -> Site:
    counting: list[CountingEngine] = []

    def count_engine_calls(app: FastAPI) -> None:
        svc = app.state.services
        engine = CountingEngine(svc.engine)
        svc.engine = svc.test_engine = engine
        counting.append(engine)

    server = start_server(make_settings(data_dir, **settings), count_engine_calls)
    return Site(server, counting[0])


def blocks(seed: int, size: tuple[int, int]) -> Image.Image:
    """A picture of coloured blocks, different for every seed."""
    rng = np.random.default_rng(seed)
    cells = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    return Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC)


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


KNOWN = blocks(1, (1280, 960))
"""The operator's known image; clients send it resized and re-encoded."""
KNOWN_COPY = data_url(
    encoded(KNOWN.resize((640, 480), Image.Resampling.LANCZOS), "JPEG", quality=70),
    "image/jpeg",
)


def write_hashes(path: Path, pictures: list[Image.Image], label: str) -> Path:
    path.write_text(
        "# known images\n"
        + "".join(f"{image_hash(p):016x}  {label} {n}\n" for n, p in enumerate(pictures))
    )
    return path


def submit(client: httpx.Client, prompt: str, **fields: Any) -> str:
    body = {"prompt": prompt, "duration": 1, "ratio": "1:1", **fields}
    answer = client.post("/v1/generate", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"]["task_id"])


def refusals(settings: Any, task_id: str) -> list[ModerationRefusal]:
    async def read(db: Database) -> list[ModerationRefusal]:
        async with db.read() as session:
            found = await session.scalars(
                select(ModerationRefusal).where(ModerationRefusal.task_id == task_id)
            )
            return list(found)

    return run_db(settings, read)


def stored_videos(server: RunningServer, task_id: str) -> list[Path]:
    return list((server.settings.files_dir / task_id).glob("*.mp4"))


def assert_refused(site: Site, client: httpx.Client, task_id: str) -> dict[str, Any]:
    """Failed with the sentence alone, refunded, no file; returns the record."""
    data = wait_for_task(client, task_id)
    assert data["status"] == "failed", data
    assert data["error_message"] == REFUSED
    assert data["consumed_credits"] == 0 and not data["response"]
    shown = client.get("/v1/status", params={"task_id": task_id}).text
    assert "moderation" not in shown and "refused by" not in shown  # no check, no rule
    assert stored_videos(site.server, task_id) == []
    found = refusals(site.server.settings, task_id)
    assert len(found) == 1
    record = found[0]
    return {
        "stage": record.stage,
        "check": record.check_name,
        "subject": record.subject,
        "rule": record.rule,
        "score": record.score,
        "is_test": record.is_test,
    }


def new_test_key(server: RunningServer) -> accounts.IssuedKey:
    async def create(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.create_account(session, plan="free", credits=0, is_test=True)

    return run_db(server.settings, create)


# --- the built-in policy ------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The built-in policy with the operator's word list and known images."""
    root = tmp_path_factory.mktemp("moderated")
    words = root / "words.txt"
    words.write_text("# house rules\nbeheading\ngore*\n")
    known = write_hashes(root / "known.txt", [KNOWN], "known picture")
    running = start_site(
        root / "data", workers=2, moderation_words=[words], moderation_image_hashes=[known]
    )
    yield running
    running.server.stop()


@pytest.mark.parametrize(
    "prompt",
    [
        "a beheading in the town square",
        "B E H E A D I N G",
        "a ВЕНЕАDING, slowly",  # Cyrillic В, Е, Н, А
        "g.o.r.e everywhere",
        "a G0RE-SOAKED close-up",
    ],
)
def test_a_prompt_from_the_operators_list_fails_refunded_without_a_file(
    site: Site, prompt: str
) -> None:
    issued = site.server.new_key(credits=1000)
    calls = site.engine.calls
    with site.client(issued.key) as client:
        record = assert_refused(site, client, submit(client, prompt))
        assert client.get("/v1/account").json()["data"]["balance"] == 1000
    assert record["stage"] == "input" and record["check"] == "words"
    assert record["rule"] in ("operator: beheading", "operator: gore*")
    assert record["subject"] == "prompt" and record["is_test"] is False
    assert site.engine.calls == calls  # refused before the engine started
    balance, ledger = run_db(
        site.server.settings, lambda db: balance_and_ledger(db, issued.account_id)
    )
    assert balance == ledger == 1000


def test_an_offensive_prompt_is_caught_by_the_text_classifier(site: Site) -> None:
    issued = site.server.new_key(credits=1000)
    with site.client(issued.key) as client:
        record = assert_refused(site, client, submit(client, "you worthless stupid bitch"))
    assert record["check"] == "text_classifier" and record["rule"] == "offensive language"
    assert record["score"] is not None and record["score"] >= 0.9


def test_fifty_ordinary_prompts_all_complete(site: Site) -> None:
    issued = site.server.new_key(plan="enterprise", credits=40 * len(BENIGN))
    calls = site.engine.calls
    with site.client(issued.key) as client:
        task_ids = [submit(client, prompt, resolution="480p") for prompt in BENIGN]
        outcomes = {
            prompt: wait_for_task(client, task_id)["status"]
            for prompt, task_id in zip(BENIGN, task_ids, strict=True)
        }
    assert {p: s for p, s in outcomes.items() if s != "completed"} == {}
    assert site.engine.calls == calls + len(BENIGN)


def test_a_known_image_resized_and_reencoded_fails_before_the_engine(site: Site) -> None:
    issued = site.server.new_key(credits=1000)
    calls = site.engine.calls
    with site.client(issued.key) as client:
        task_id = submit(client, "a calm scene", images=[KNOWN_COPY], mode="spicy")
        record = assert_refused(site, client, task_id)
    assert site.engine.calls == calls
    assert record["check"] == "image_hash" and record["subject"] == "image 1"
    assert record["rule"].startswith("operator: ") and record["rule"].endswith("known picture 0")
    assert record["score"] is not None and record["score"] <= 8


def test_test_keys_keep_the_forced_outcome_and_meet_the_real_checks(site: Site) -> None:
    issued = new_test_key(site.server)
    with site.client(issued.key) as client:
        forced = client.post(
            "/v1/generate",
            json={"prompt": "a calm lake", "duration": 1},
            headers={"Imagine-Test-Outcome": "moderation"},
        ).json()["data"]["task_id"]
        assert wait_for_task(client, forced)["error_message"] == REFUSED
        assert refusals(site.server.settings, forced) == []  # forced, not refused
        record = assert_refused(site, client, submit(client, "b e h e a d i n g"))
        assert record["is_test"] is True
        fine = wait_for_task(client, submit(client, "a calm lake at dawn"))
        assert fine["status"] == "completed"


def test_operators_review_refusals_through_the_admin_api(site: Site) -> None:
    issued = site.server.new_key(credits=1000)
    with site.client(issued.key) as client:
        task_id = submit(client, "gore on the walls")
        wait_for_task(client, task_id)
        assert client.get("/v1/admin/moderation").status_code == 403
    operator = site.server.new_admin_key()
    with site.client(operator.key) as admin:
        listed = admin.get("/v1/admin/moderation", params={"limit": 100}).json()["data"]
        mine = [r for r in listed["refusals"] if r["task_id"] == task_id]
        assert len(mine) == 1
        refusal = mine[0]
        assert refusal["prompt"] == "gore on the walls" and refusal["rule"] == "operator: gore*"
        assert refusal["account_id"] == issued.account_id and refusal["mode"] == "normal"
        assert refusal["false_positive"] is False and refusal["reviewed_at"] is None
        reviewed = admin.post(
            f"/v1/admin/moderation/{refusal['refusal_id']}/review",
            json={"false_positive": True, "note": "horror film set, fake blood"},
        )
        assert reviewed.status_code == 200, reviewed.text
        marked = reviewed.json()["data"]
        assert marked["false_positive"] is True and marked["reviewed_by"] == operator.key_id
        assert marked["review_note"] == "horror film set, fake blood"
        only_marked = admin.get("/v1/admin/moderation", params={"false_positive": "true"})
        ids = [r["refusal_id"] for r in only_marked.json()["data"]["refusals"]]
        assert refusal["refusal_id"] in ids
        unmarked = admin.get("/v1/admin/moderation", params={"false_positive": "false"})
        assert refusal["refusal_id"] not in [
            r["refusal_id"] for r in unmarked.json()["data"]["refusals"]
        ]
        missing = admin.post(
            "/v1/admin/moderation/mod_000000000000000000000000/review",
            json={"false_positive": True},
        )
        assert missing.status_code == 404
        assert admin.get("/v1/admin/moderation", params={"after": "nope"}).status_code == 400
    with site.client(issued.key) as client:  # nothing ran again
        assert wait_for_task(client, task_id)["status"] == "failed"


def test_operators_review_refusals_in_the_console(site: Site) -> None:
    issued = site.server.new_key(credits=1000)
    with site.client(issued.key) as client:
        task_id = submit(client, "beheading at dawn")
        wait_for_task(client, task_id)
    with sign_in(site.server, issued.key) as browser:
        assert browser.get("/admin/moderation").status_code == 403
    refusal_id = refusals(site.server.settings, task_id)[0].id
    with sign_in(site.server, site.server.new_admin_key().key) as browser:
        page = browser.get("/admin/moderation").text
        assert f'id="refusal-{refusal_id}"' in page and "beheading at dawn" in page
        assert "operator: beheading" in page
        token = csrf_of(browser, "/admin/moderation")
        forged = browser.post(
            f"/admin/moderation/{refusal_id}/review", data={"false_positive": "true"}
        )
        assert forged.status_code == 403
        marked = browser.post(
            f"/admin/moderation/{refusal_id}/review",
            data={"csrf_token": token, "false_positive": "true", "note": "a history lesson"},
        )
        assert marked.status_code == 303
        shown = browser.get("/admin/moderation", params={"false_positive": "true"}).text
        assert f'id="refusal-{refusal_id}"' in shown and "a history lesson" in shown


# --- an operator's own policy ---------------------------------------------------

ANIMATED = blocks(3, (320, 240))
"""An input image the preview engine animates; its output frames are blocked."""
ANIMATED_PNG = encoded(ANIMATED, "PNG")
ANIMATED_PROMPT, ANIMATED_SEED = "a slow pan across the picture", 11


def preview_frames() -> list[Image.Image]:
    """The frames a worker samples from the preview engine's video of ANIMATED."""
    engine = PreviewEngine()
    width, height = FRAME_SIZES[("16:9", "480p")]
    job = GenerationJob(
        task_id="task_frames",
        prompt=ANIMATED_PROMPT,
        mode="normal",
        ratio="16:9",
        resolution="480p",
        width=width,
        height=height,
        duration=1,
        seed=ANIMATED_SEED,
        images=(InputImage(ANIMATED_PNG, "image/png", *ANIMATED.size),),
        fps=engine.capabilities.fps,
    )
    with tempfile.TemporaryDirectory() as workdir:
        paths = asyncio.run(engine.generate(job, Path(workdir), JobControl()))
        return [Image.fromarray(frame) for frame in sample_frames(paths[0], 4)]


POLICY = """
[hash_lists]
known = "known.txt"
frames = "frames.txt"

[modes.normal.input]
hash_lists = ["known"]

[modes.normal.output]
hash_lists = ["frames"]

[modes.spicy.input]
hash_lists = []

[modes.fun.input]
image_classes = { RED = 0.5 }

[modes.fun.output]
image_classes = { RED = 0.5 }
"""


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A policy of the operator's: known images refused in normal but not in
    spicy, a video's frames refused as output, and an image classifier of the
    test's in fun."""
    root = tmp_path_factory.mktemp("tuned")
    write_hashes(root / "known.txt", [KNOWN], "known picture")
    write_hashes(root / "frames.txt", preview_frames(), "frame")
    (root / "policy.toml").write_text(POLICY)
    running = start_site(
        root / "data",
        moderation_policy=root / "policy.toml",
        moderation_image_classifier="colour_classifier:red_share",
    )
    yield running
    running.server.stop()


def test_a_known_image_passes_in_a_mode_whose_policy_allows_it(tuned: Site) -> None:
    issued = tuned.server.new_key(credits=1000)
    with tuned.client(issued.key) as client:
        calls = tuned.engine.calls
        refused = submit(client, "a calm scene", images=[KNOWN_COPY])
        assert assert_refused(tuned, client, refused)["check"] == "image_hash"
        assert tuned.engine.calls == calls
        allowed_id = submit(client, "a calm scene", images=[KNOWN_COPY], mode="spicy")
        allowed = wait_for_task(client, allowed_id)
        assert allowed["status"] == "completed", allowed
        assert tuned.engine.calls == calls + 1


def test_output_frames_are_checked_before_anything_is_stored(tuned: Site) -> None:
    issued = tuned.server.new_key(credits=1000)
    with tuned.client(issued.key) as client:
        calls = tuned.engine.calls
        task_id = submit(
            client,
            ANIMATED_PROMPT,
            images=[data_url(ANIMATED_PNG)],
            seed=ANIMATED_SEED,
            ratio="16:9",
            resolution="480p",
        )
        record = assert_refused(tuned, client, task_id)
        assert client.get("/v1/account").json()["data"]["balance"] == 1000
    assert tuned.engine.calls == calls + 1  # generated, then refused
    assert record["stage"] == "output" and record["check"] == "image_hash"
    assert record["subject"].startswith("video 1 frame ")
    assert record["rule"].startswith("frames: ") and record["score"] == 0


def test_the_image_classifier_applies_its_classes_thresholds(tuned: Site) -> None:
    issued = tuned.server.new_key(credits=1000)
    red = data_url(encoded(Image.new("RGB", (320, 240), (220, 30, 30)), "PNG"))
    half_red = Image.new("RGB", (320, 240), (40, 90, 200))
    half_red.paste((220, 30, 30), (0, 0, 100, 240))  # 31% red: under the 0.5 threshold
    with tuned.client(issued.key) as client:
        calls = tuned.engine.calls
        refused = submit(client, "a red wall", images=[red], mode="fun")
        record = assert_refused(tuned, client, refused)
        assert record["check"] == "image_classifier" and record["rule"] == "RED"
        assert record["score"] == 1.0 and tuned.engine.calls == calls
        under = submit(client, "a wall", images=[data_url(encoded(half_red, "PNG"))], mode="fun")
        plain = submit(client, "a lighthouse at dusk", mode="fun")  # generated frames only
        for task_id in (under, plain):
            assert wait_for_task(client, task_id)["status"] == "completed"


def test_a_policy_naming_a_missing_classifier_stops_the_start(tmp_path: Path) -> None:
    from imagine.app import create_app
    from imagine.settings import SettingsError

    (tmp_path / "policy.toml").write_text(POLICY.replace("RED", "FACE_FEMALE"))
    (tmp_path / "known.txt").write_text("")
    (tmp_path / "frames.txt").write_text("")
    for classifier, complaint in (
        ("no_such_module:make", "no module named 'no_such_module'"),
        ("colour_classifier", "package.module:factory"),
    ):
        settings = make_settings(
            tmp_path / "data",
            moderation_policy=tmp_path / "policy.toml",
            moderation_image_classifier=classifier,
        )
        with pytest.raises(SettingsError, match=complaint):
            create_app(settings)


# --- the external endpoint -------------------------------------------------------

ENDPOINT_KEY = "sk-test-moderation-0123456789"


@pytest.fixture(scope="module")
def stub() -> Iterator[ModerationStub]:
    running = ModerationStub(ENDPOINT_KEY)
    yield running
    running.down()


@pytest.fixture(scope="module")
def endpoint_sites(
    stub: ModerationStub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Site]]:
    """The built-in policy asking the stub, once failing open, once closed."""
    root = tmp_path_factory.mktemp("endpoint")
    sites = {
        name: start_site(
            root / name,
            moderation_endpoint_url=stub.url,
            moderation_endpoint_key=ENDPOINT_KEY,
            moderation_endpoint_model="omni-moderation-latest",
            moderation_endpoint_timeout_seconds=0.5,
            moderation_endpoint_fail_open=name == "open",
            max_attempts=1,
        )
        for name in ("open", "closed")
    }
    yield sites
    for running in sites.values():
        running.server.stop()


@pytest.fixture
def stub_state(stub: ModerationStub) -> Iterator[ModerationStub]:
    """The stub answering promptly again after each test."""
    yield stub
    stub.slow = False
    if not stub.is_up:
        stub.up()


def run_through(sites: dict[str, Site], prompt: str) -> dict[str, dict[str, Any]]:
    results = {}
    for name, running in sites.items():
        issued = running.server.new_key(credits=1000)
        with running.client(issued.key) as client:
            task_id = submit(client, prompt)
            data = wait_for_task(client, task_id)
            data["balance"] = client.get("/v1/account").json()["data"]["balance"]
            data["refusals"] = refusals(running.server.settings, task_id)
            data["stored"] = stored_videos(running.server, task_id)
        results[name] = data
    return results


def test_the_endpoints_flag_refuses_and_its_all_clear_passes_prompt_and_frames(
    endpoint_sites: dict[str, Site], stub_state: ModerationStub
) -> None:
    flagged = run_through(endpoint_sites, "a harmful stunt")
    for data in flagged.values():
        assert data["status"] == "failed" and data["error_message"] == REFUSED
        assert data["balance"] == 1000 and data["stored"] == []
        (record,) = data["refusals"]
        assert (record.check_name, record.rule) == ("endpoint", "flagged: violence")
    stub_state.requests.clear()
    passed = run_through(endpoint_sites, "a calm stunt")
    assert all(data["status"] == "completed" for data in passed.values())
    texts = [r for r in stub_state.requests if r["input"] == "a calm stunt"]
    frames = [r for r in stub_state.requests if isinstance(r["input"], list)]
    assert len(texts) == 2 and all(r["model"] == "omni-moderation-latest" for r in texts)
    assert len(frames) == 2  # each server sent its output's frames as images
    assert all(part["type"] == "image_url" for r in frames for part in r["input"])
    assert all(
        part["image_url"]["url"].startswith("data:image/jpeg;base64,")
        for r in frames
        for part in r["input"]
    )


@pytest.mark.parametrize("fault", ["slow", "down"])
def test_an_unanswering_endpoint_fails_open_or_closed_as_configured(
    endpoint_sites: dict[str, Site], stub_state: ModerationStub, fault: str
) -> None:
    if fault == "slow":
        stub_state.slow = True
    else:
        stub_state.down()
    results = run_through(endpoint_sites, "a calm stunt, again")
    opened, closed = results["open"], results["closed"]
    assert opened["status"] == "completed" and opened["balance"] == 960
    assert closed["status"] == "failed" and closed["error_message"] == NETWORK
    assert closed["balance"] == 1000 and closed["stored"] == []
    assert opened["refusals"] == closed["refusals"] == []  # no verdict, no refusal


def test_the_stub_checks_the_key(stub: ModerationStub) -> None:
    """The stub is the protocol's, not a yes-machine: a wrong key is refused."""
    answer = httpx.post(stub.url, json={"input": "x"}, headers={"Authorization": "Bearer no"})
    assert answer.status_code == 401
    right = httpx.post(
        stub.url, json={"input": "harmful"}, headers={"Authorization": f"Bearer {ENDPOINT_KEY}"}
    )
    assert right.json()["results"][0]["flagged"] is True


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_refusals_are_recorded_and_reviewed_on_postgresql(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory()
    issued = server.new_key(credits=1000)
    with server.client(issued.key) as client:
        task_id = submit(client, "a N.U.D.E statue")
        assert wait_for_task(client, task_id)["error_message"] == REFUSED
        assert client.get("/v1/account").json()["data"]["balance"] == 1000
    with server.client(server.new_admin_key().key) as admin:
        (refusal,) = admin.get("/v1/admin/moderation").json()["data"]["refusals"]
        assert (refusal["task_id"], refusal["rule"]) == (task_id, "explicit: nude*")
        reviewed = admin.post(
            f"/v1/admin/moderation/{refusal['refusal_id']}/review", json={"false_positive": True}
        )
        assert reviewed.json()["data"]["false_positive"] is True


def refusals_counted(client: httpx.Client, stage: str, check: str) -> float:
    """`imagine_moderation_refusals_total{stage, check}` as /metrics shows it now."""
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "imagine_moderation_refusals_total" and sample.labels == {
                "stage": stage,
                "check": check,
            }:
                return float(sample.value)
    return 0.0


def test_refusals_are_counted_in_the_metrics(site: Site) -> None:
    issued = site.server.new_key(credits=1000)
    with site.client(issued.key) as client:
        before = refusals_counted(client, "input", "words")
        assert_refused(site, client, submit(client, "a beheading at noon"))
        assert refusals_counted(client, "input", "words") == before + 1
