"""The console in Korean and English: a complete catalog, the language chosen
by the cookie or Accept-Language, localised times and numbers, and no page
left with English text in Korean. The API never changes language."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import ClassVar

import httpx
import pytest
from babel.messages.pofile import read_po

from imagine.console import i18n

from conftest import RunningServer
from helpers import wait_for_task

KOREAN = {"Accept-Language": "ko-KR,ko;q=0.9,en;q=0.6"}
PLACEHOLDER = re.compile(r"%\(\w+\)s")
# Text that stays as written in any language: names, codes and the API's words.
KEEP = {"Python SDK", "Standard Webhooks", "API", "Imagine"}
ENGLISH_RUN = re.compile(r"[A-Za-z]{2,}(?:[ \u00a0]+[A-Za-z]{2,})+")


def catalog() -> dict[str, str]:
    with i18n.catalog_path("ko").open("rb") as source:
        parsed = read_po(source, locale="ko")
    return {m.id: m.string for m in parsed if m.id and not m.fuzzy}  # type: ignore[misc]


def test_every_message_has_a_korean_translation_with_the_same_placeholders() -> None:
    translations = catalog()
    sources = i18n.source_messages()
    assert len(sources) > 150
    missing = sorted(set(sources) - {m for m, s in translations.items() if s})
    assert not missing, (
        "messages without a Korean translation (run scripts/console-messages and fill "
        f"them in): {missing}"
    )
    for message in sources:
        assert sorted(PLACEHOLDER.findall(message)) == sorted(
            PLACEHOLDER.findall(translations[message])
        ), message
    stale = sorted(set(translations) - set(sources))
    assert not stale, f"translations of messages no longer used: {stale}"


class VisibleText(HTMLParser):
    """The text a reader sees or hears (text nodes, aria-label, placeholder, title
    attributes), leaving out code, user content and what is marked English."""

    SKIPPED_TAGS: ClassVar[set[str]] = {"code", "pre", "script", "style", "option", "time", "title"}
    SKIPPED_CLASSES: ClassVar[set[str]] = {"prompt", "note", "who", "brand", "secret"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = set((values.get("class") or "").split())
        skipped = (
            (bool(self.stack) and self.stack[-1])
            or tag in self.SKIPPED_TAGS
            or bool(classes & self.SKIPPED_CLASSES)
            or values.get("lang") not in (None, "ko")
        )
        if not skipped:
            for name in ("aria-label", "placeholder", "title"):
                if values.get(name):
                    self.found.append(values[name] or "")
        if tag not in ("input", "meta", "link", "br", "img"):
            self.stack.append(skipped)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("input", "meta", "link", "br", "img") and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not (self.stack and self.stack[-1]) and data.strip():
            self.found.append(data.strip())


def english_left(html: str) -> list[str]:
    parser = VisibleText()
    parser.feed(html)
    runs = [run for text in parser.found for run in ENGLISH_RUN.findall(text)]
    return [run for run in runs if run not in KEEP]


@pytest.fixture
def korean(server: RunningServer) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A Korean browser signed in as an admin, with a task, a failure and a key."""
    operator = server.new_admin_key()
    with server.client(operator.key) as api:
        granted = api.post(
            f"/v1/admin/accounts/{operator.account_id}/credits", json={"amount": 1200}
        )
        assert granted.status_code == 200
        task_id = api.post("/v1/generate", json={"prompt": "산과 호수", "duration": 1}).json()[
            "data"
        ]["task_id"]
        wait_for_task(api, task_id)
        # A refusal, so the moderation page shows its table.
        refused = api.post("/v1/generate", json={"prompt": "n a k e d", "duration": 1})
        wait_for_task(api, refused.json()["data"]["task_id"])
    with server.client(follow_redirects=False, headers=KOREAN) as client:
        assert client.post("/signin", data={"api_key": operator.key}).status_code == 303
        yield client, {"task": task_id, "account": operator.account_id}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_console_page_is_left_in_english(
    korean: tuple[httpx.Client, dict[str, str]],
) -> None:
    client, ids = korean
    pages = [
        "/",
        "/playground",
        "/tasks",
        "/tasks?status=failed",
        f"/tasks/{ids['task']}",
        "/keys",
        "/usage",
        "/webhooks",
        "/admin",
        f"/admin/accounts/{ids['account']}",
        "/admin/queue",
        "/admin/moderation",
        "/tasks/task_00000000000000000000000f",  # the error page
    ]
    with httpx.Client(base_url=str(client.base_url), headers=KOREAN) as anonymous:
        signin = anonymous.get("/signin").text
    assert english_left(signin) == []
    for page in pages:
        answer = client.get(page)
        assert answer.status_code in (200, 404), page
        assert '<html lang="ko"' in answer.text, page
        assert english_left(answer.text) == [], page
    live = client.get(f"/tasks/{ids['task']}/live").text
    assert english_left(live) == []
    overview = client.get("/").text
    assert "전" in overview  # relative times, e.g. "10초 전"
    assert "1,160" in overview  # numbers formatted for the locale


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_language_follows_the_header_then_the_switch(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(follow_redirects=False) as client:
        assert client.post("/signin", data={"api_key": issued.key}).status_code == 303
        assert "<h1>Overview</h1>" in client.get("/").text  # no preference: English
        for header in ("ko-KR", "ko", "fr-FR,ko;q=0.8", "en;q=0.1, ko-KR;q=0.9"):
            page = client.get("/", headers={"Accept-Language": header}).text
            assert "<h1>개요</h1>" in page, header
        assert "<h1>Overview</h1>" in client.get("/", headers={"Accept-Language": "de"}).text
        switched = client.get("/language/ko", params={"next": "/usage"})
        assert switched.status_code == 303 and switched.headers["location"] == "/usage"
        assert "imagine_lang=ko" in switched.headers["set-cookie"]
        # The choice outlasts the header, until switched back.
        assert "<h1>사용량</h1>" in client.get("/usage", headers={"Accept-Language": "en"}).text
        client.get("/language/en", params={"next": "https://evil.example/"})
        assert "<h1>Usage</h1>" in client.get("/usage", headers=KOREAN).text
        assert client.get("/language/xx").status_code == 404
        # The API keeps the contract's English whatever the browser prefers.
        api = client.get(
            "/v1/status",
            params={"task_id": "task_00000000000000000000000f"},
            headers={**KOREAN, "Authorization": f"Bearer {issued.key}"},
        )
        assert api.json()["message"] == "Task not found"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_korean_explains_next_to_the_apis_english_sentence(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(follow_redirects=False, headers=KOREAN) as client:
        wrong = client.post("/signin", data={"api_key": "imk_wrong"})
        assert "그 키는 받아들여지지 않았습니다" in wrong.text
        assert client.post("/signin", data={"api_key": issued.key}).status_code == 303
        token = re.search(r'name="csrf_token" value="(\w+)"', client.get("/keys").text)
        assert token is not None
        refused = client.post(
            "/playground",
            data={"csrf_token": token.group(1), "prompt": "x", "duration": "99"},
            headers={"HX-Request": "true"},
        )
        assert "제출되지 않았고" in refused.text
        assert "Invalid request: The duration parameter" in refused.text  # the API's words
        missing = client.get("/tasks/task_00000000000000000000000f")
        assert missing.status_code == 404
        assert "다른 계정의 것입니다" in missing.text and "Task not found" in missing.text
