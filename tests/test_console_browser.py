"""The web console in Debian's Chromium, against a real server on loopback.

What people do with it: generate and watch a video play, cancel a task and
find the refund, make a key, copy it, sign in with it and revoke it, and an
operator granting credits. And what every page must be: loading nothing from
another origin, logging no error, breaking no Content-Security-Policy rule,
with no serious or critical axe-core finding in the light and the dark theme;
a prompt is shown as text, never markup; at 375 px nothing scrolls sideways
and the playground works from the keyboard alone.

One server and one browser serve the module; each test opens its own
contexts (cookie jars) and a fresh account, so tests do not see each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    expect,
    sync_playwright,
)

from imagine.accounts import service as accounts
from imagine.db.database import Database

from browser import RECORD_VIOLATIONS, launch, require_chromium
from conftest import RunningServer, make_settings, start_server
from helpers import run_db, wait_for_task

require_chromium()

WAIT_MS = 30_000
"""Generous on purpose: a loaded two-core machine is slow, and `expect` stops
waiting as soon as the condition holds."""
TASK_MS = 90_000
XSS_PROMPT = "<img src=x onerror=alert(1)>"

expect.set_options(timeout=WAIT_MS)

NewContext = Callable[..., BrowserContext]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The module's server; its tests sign in many times, so that limit is lifted."""
    data_dir: Path = tmp_path_factory.mktemp("console")
    server = start_server(make_settings(data_dir, console_signins_per_minute=10_000))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One browser for the module; tests isolate themselves in contexts."""
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def new_context(chromium: Browser) -> Iterator[NewContext]:
    """Opens browser contexts on a server (options as Playwright's `new_context`);
    all are closed when the test ends."""
    opened: list[BrowserContext] = []

    def factory(server: RunningServer, **options: Any) -> BrowserContext:
        context = chromium.new_context(base_url=server.url, **options)
        context.set_default_timeout(WAIT_MS)
        context.add_init_script(RECORD_VIOLATIONS)
        opened.append(context)
        return context

    yield factory
    for context in opened:
        context.close()


def new_key(
    server: RunningServer, *, credits: int = 1000, admin: bool = False
) -> accounts.IssuedKey:
    """The first key of a new account. The database is reached from another
    thread: `asyncio.run` refuses to run where Playwright keeps its event loop."""

    async def create(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.create_account(
                session, plan="enterprise" if admin else "free", credits=credits, is_admin=admin
            )

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run_db, server.settings, create).result()


def sign_in(context: BrowserContext, key: str) -> Page:
    """A page of `context`, signed in with `key`, on the overview."""
    page = context.new_page()
    page.goto("/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    return page


def menu(page: Page, name: str) -> Locator:
    """A link of the console's main navigation."""
    return page.get_by_role("navigation", name="Console").get_by_role("link", name=name, exact=True)


def submit_task(server: RunningServer, key: str, prompt: str) -> str:
    with server.client(key) as client:
        answer = client.post("/v1/generate", json={"prompt": prompt, "duration": 1})
    assert answer.status_code == 200, answer.text
    task_id: str = answer.json()["data"]["task_id"]
    return task_id


@dataclass
class Watch:
    """What a page did that it should not have: requests to another origin,
    console errors, page errors and CSP reports (the browser logs those as
    console messages, and `RECORD_VIOLATIONS` keeps them on `window`)."""

    origin: str
    problems: list[str] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)
    """Every same-origin path requested, to show that requests were seen at all."""

    def attach(self, page: Page) -> None:
        page.on("request", lambda request: self._request(request.url))
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _request(self, url: str) -> None:
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.problems.append(f"request to another origin: {url}")
        else:
            self.paths.add(parts.path)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            self.problems.append(f"console {message.type}: {message.text}")

    def take(self, page: Page) -> list[str]:
        """Everything seen so far, the page's recorded CSP violations included; starts over."""
        found = self.problems + [
            f"CSP violation: {violation}" for violation in page.evaluate("window.__violations")
        ]
        self.problems = []
        return found


def serious_axe_findings(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"axe {violation['id']} ({violation['impact']}): {violation['help']} at "
        + "; ".join(" ".join(node["target"]) for node in violation["nodes"])
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def assert_no_sideways_scroll(page: Page) -> None:
    """The page is no wider than the window (wide tables scroll inside themselves)."""
    sizes: dict[str, int] = page.evaluate(
        "({scroll: document.scrollingElement.scrollWidth,"
        " client: document.scrollingElement.clientWidth})"
    )
    assert sizes["scroll"] <= sizes["client"] + 1, (page.url, sizes)


def tab_to(page: Page, element_id: str, most: int = 60) -> None:
    """Presses Tab until the element with `element_id` has the focus; each
    element passed on the way must show a focus outline."""
    for _ in range(most):
        page.keyboard.press("Tab")
        focused: dict[str, str] = page.evaluate(
            """() => {
                const element = document.activeElement;
                const style = getComputedStyle(element);
                return {id: element.id, html: element.outerHTML.slice(0, 120),
                        outline: style.outlineStyle, width: style.outlineWidth};
            }"""
        )
        assert focused["outline"] != "none" and focused["width"] != "0px", focused
        if focused["id"] == element_id:
            return
    raise AssertionError(f"#{element_id} not reached with {most} presses of Tab")


# --- What people do ---------------------------------------------------------


def test_a_generated_video_plays_in_the_playground(
    console: RunningServer, new_context: NewContext
) -> None:
    issued = new_key(console)
    context = new_context(console)
    watch = Watch(console.url)
    page = sign_in(context, issued.key)
    watch.attach(page)
    menu(page, "Playground").click()
    page.get_by_label("Prompt").fill("a lighthouse at dusk")
    page.get_by_label("Duration (seconds)").fill("1")
    page.get_by_role("button", name="Generate").click()

    live = page.locator("#task-live")
    expect(live).to_have_attribute("data-status", "completed", timeout=TASK_MS)
    expect(live.locator("progress")).to_have_attribute("value", "100")
    video = live.locator("video")
    expect(video).to_have_count(1)
    src = video.get_attribute("src")
    assert src is not None and src.startswith(f"{console.url}/")
    expect(live.get_by_role("link", name="Download video 1")).to_have_attribute("href", src)

    video.evaluate("video => { video.muted = true; return video.play(); }")
    page.wait_for_function("video => video.currentTime > 0.2", arg=video.element_handle())
    assert video.evaluate("video => video.error") is None
    assert watch.take(page) == []


def test_cancelling_a_task_refunds_it_in_the_usage_ledger(
    sqlite_server: Callable[..., RunningServer], new_context: NewContext
) -> None:
    server = sqlite_server(workers=0)  # nothing runs the task: it stays pending
    issued = new_key(server)
    page = sign_in(new_context(server), issued.key)
    watch = Watch(server.url)
    watch.attach(page)
    page.goto("/playground")
    page.get_by_label("Prompt").fill("never runs")
    page.get_by_role("button", name="Generate").click()

    live = page.locator("#task-live")
    expect(live).to_have_attribute("data-status", "pending")
    task_id = live.get_attribute("data-task")
    page.locator("#cancel-task").click()
    expect(live).to_have_attribute("data-status", "cancelled")
    expect(live).to_contain_text("Cancelled; the credits were refunded.")

    menu(page, "Usage").click()
    task_link = f'a[href="/tasks/{task_id}"]'
    debit = page.locator("tr.kind-debit").filter(has=page.locator(task_link))
    refund = page.locator("tr.kind-refund").filter(has=page.locator(task_link))
    expect(refund).to_have_count(1)
    expect(debit).to_have_count(1)
    charged = debit.locator("td.num").first.inner_text()
    assert charged.startswith("-"), charged
    expect(refund.locator("td.num").first).to_have_text("+" + charged[1:])
    assert watch.take(page) == []


def test_a_new_key_is_shown_once_copied_used_and_revoked(
    console: RunningServer, new_context: NewContext
) -> None:
    issued = new_key(console)
    owner = new_context(console, permissions=["clipboard-read", "clipboard-write"])
    page = sign_in(owner, issued.key)
    menu(page, "API keys").click()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()

    shown = page.locator("#new-key")
    expect(shown).to_have_text(re.compile(r"^imk_\S{20,}$"))
    key = shown.inner_text().strip()
    page.locator('button[data-copy="new-key"]').click()
    expect(page.locator('button[data-copy="new-key"]')).to_have_attribute("data-copied", "yes")
    assert page.evaluate("navigator.clipboard.readText()") == key

    page.goto("/keys")  # the page again, as a GET: the key is not in it
    expect(page.locator("#new-key")).to_have_count(0)
    row = page.locator("table.keys tbody tr").filter(has_text="laptop")
    expect(row).to_have_count(1)
    assert key not in page.content()

    other = sign_in(new_context(console), key)
    expect(other.locator(".who")).to_contain_text(key[:8])

    row.get_by_role("link", name=re.compile("^Revoke")).click()
    page.get_by_role("button", name="Revoke this key").click()
    expect(page).to_have_url(f"{console.url}/keys")
    expect(row).to_contain_text("revoked")

    menu(other, "Tasks").click()
    expect(other).to_have_url(f"{console.url}/signin?next=/tasks")
    expect(other.get_by_label("API key")).to_be_visible()


def test_an_operator_grant_shows_in_the_users_balance(
    console: RunningServer, new_context: NewContext
) -> None:
    operator_key = new_key(console, admin=True)
    user_key = new_key(console, credits=1000)
    user = sign_in(new_context(console), user_key.key)
    expect(user.locator("#balance")).to_have_text("1,000")

    operator = sign_in(new_context(console), operator_key.key)
    menu(operator, "Operator").click()
    operator.locator(f'a[href="/admin/accounts/{user_key.account_id}"]').click()
    operator.get_by_label("Credits").fill("250")
    operator.get_by_label("Note").fill("thanks for the report")
    operator.get_by_role("button", name="Grant", exact=True).click()
    expect(operator.locator("#account-balance")).to_have_text("1,250")

    user.reload()
    expect(user.locator("#balance")).to_have_text("1,250")


# --- What every page must be -----------------------------------------------


@dataclass
class Tour:
    """A user with a finished task and an operator, for visiting every page."""

    user: accounts.IssuedKey
    operator: accounts.IssuedKey
    task_id: str


@pytest.fixture(scope="module")
def tour(console: RunningServer) -> Tour:
    user = new_key(console)
    task_id = submit_task(console, user.key, "a red kite over the hills")
    refused = submit_task(console, user.key, "n a k e d")  # for the moderation page
    with console.client(user.key) as client:
        assert wait_for_task(client, task_id, timeout=TASK_MS / 1000)["status"] == "completed"
        assert wait_for_task(client, refused, timeout=TASK_MS / 1000)["status"] == "failed"
    return Tour(user=user, operator=new_key(console, admin=True), task_id=task_id)


def visit(page: Page, watch: Watch, path: str, ready: str = "main h1") -> list[str]:
    """The problems of the page at `path`, once `ready` is visible."""
    page.goto(path)
    expect(page.locator(ready).first).to_be_visible()
    found = watch.take(page) + serious_axe_findings(page)
    return [f"{path}: {problem}" for problem in found]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_is_same_origin_clean_and_accessible(
    console: RunningServer,
    new_context: NewContext,
    tour: Tour,
    scheme: Literal["light", "dark"],
) -> None:
    problems: list[str] = []
    watch = Watch(console.url)

    page = new_context(console, color_scheme=scheme).new_page()
    watch.attach(page)
    problems += visit(page, watch, "/signin")
    page.get_by_label("API key").fill(tour.user.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    for path in (
        "/",
        "/playground",
        "/tasks",
        f"/tasks/{tour.task_id}",
        "/keys",
        f"/keys/{tour.user.key_id}/revoke",
        "/usage",
        "/webhooks",
    ):
        problems += visit(page, watch, path)
    problems += visit(page, watch, "/docs", ready=".opblock-summary-path")

    operator = sign_in(new_context(console, color_scheme=scheme), tour.operator.key)
    watch.attach(operator)
    for path in (
        "/admin",
        f"/admin/accounts/{tour.user.account_id}",
        "/admin/queue",
        "/admin/moderation",
    ):
        problems += visit(operator, watch, path)

    assert problems == [], "\n".join(problems)
    assert {
        "/static/console.css",
        "/static/console.js",
        "/static/vendor/htmx/htmx.min.js",
        "/static/docs.css",
        "/openapi.json",
    } <= watch.paths, watch.paths


def test_a_prompt_is_shown_as_text_never_as_markup(
    console: RunningServer, new_context: NewContext
) -> None:
    issued = new_key(console)
    task_id = submit_task(console, issued.key, XSS_PROMPT)
    page = sign_in(new_context(console), issued.key)
    dialogs: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    for path in ("/tasks", f"/tasks/{task_id}", "/"):
        page.goto(path)
        expect(page.locator('img[src="x"]')).to_have_count(0)
        expect(page.get_by_text(XSS_PROMPT).first).to_be_visible()
    assert dialogs == []


def test_at_375_px_nothing_overflows_and_the_playground_works_by_keyboard(
    console: RunningServer, new_context: NewContext
) -> None:
    issued = new_key(console)
    page = sign_in(new_context(console, viewport={"width": 375, "height": 740}), issued.key)
    assert_no_sideways_scroll(page)
    page.goto("/playground")
    assert_no_sideways_scroll(page)

    tab_to(page, "prompt")
    page.keyboard.type("a paper boat on a pond")
    tab_to(page, "duration")
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.type("1")
    tab_to(page, "submit")
    page.keyboard.press("Enter")

    expect(page.locator("#task-live")).to_have_attribute(
        "data-status", "completed", timeout=TASK_MS
    )
    assert_no_sideways_scroll(page)  # with the video in it
    page.goto("/")
    expect(page.locator("td.prompt").first).to_have_text("a paper boat on a pond")
    assert_no_sideways_scroll(page)  # with a recent task


def test_the_korean_playground_is_drawn_with_the_shipped_font(
    console: RunningServer, new_context: NewContext, tmp_path: Path
) -> None:
    """Korean is chosen from the browser's language, drawn with the vendored Noto
    Sans CJK (not a system font: Chromium's own record of the glyphs' font), and
    the language switch is remembered."""
    issued = new_key(console)
    context = new_context(console, locale="ko-KR")
    page = context.new_page()
    page.goto("/signin")
    page.get_by_label("API 키").fill(issued.key)
    page.get_by_role("button", name="로그인").click()
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_have_text("개요")
    page.goto("/playground")
    expect(heading).to_have_text("플레이그라운드")
    assert page.evaluate("document.documentElement.lang") == "ko"
    page.evaluate("async () => { await document.fonts.load('16px \"Imagine CJK\"', '가'); }")
    page.screenshot(path=str(tmp_path / "playground-ko.png"), full_page=True)
    assert (tmp_path / "playground-ko.png").stat().st_size > 10_000

    devtools = context.new_cdp_session(page)
    devtools.send("DOM.enable")
    devtools.send("CSS.enable")
    root = devtools.send("DOM.getDocument")["root"]["nodeId"]
    for selector in ("h1", "label[for=prompt]", "#submit"):
        node = devtools.send("DOM.querySelector", {"nodeId": root, "selector": selector})
        fonts = devtools.send("CSS.getPlatformFontsForNode", {"nodeId": node["nodeId"]})["fonts"]
        hangul = [font for font in fonts if font["familyName"].startswith("Noto Sans CJK")]
        assert hangul and all(font["isCustomFont"] for font in hangul), (selector, fonts)
        assert sum(font["glyphCount"] for font in hangul) >= 2, (selector, fonts)

    page.get_by_role("navigation", name="언어").get_by_role("link", name="English").click()
    expect(heading).to_have_text("Playground")
    page.reload()
    expect(heading).to_have_text("Playground")  # remembered, whatever the browser asks for
    page.get_by_role("navigation", name="Language").get_by_role("link", name="한국어").click()
    expect(heading).to_have_text("플레이그라운드")
