"""The Korean README stays in step with the English one: both show the same
commands (the two scripts and the contract's two calls), the Korean one shows
no command the English one lacks, and each links to the other."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).parents[1]
ENGLISH = ROOT / "README.md"
KOREAN = ROOT / "README.ko.md"
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def commands(readme: Path) -> list[str]:
    """The commands of a README's shell blocks, each read as the shell would
    (continued lines and quoted multi-line arguments joined; comments and
    output `# …` left out), its words' spacing normalised."""
    found = []
    for block in SHELL_BLOCK.findall(readme.read_text(encoding="utf-8")):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines(keepends=True):
            pending += line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            if words:
                found.append(" ".join(" ".join(word.split()) for word in words))
            pending = ""
        assert not pending, f"{readme.name}: unterminated command {pending!r}"
    return found


def essentials(found: list[str]) -> list[str]:
    """The two scripts, then the first generate call and the first status call."""
    scripts = [c for c in found if c.split()[0] in ("./scripts/serve", "./scripts/test")]
    generate = next(c for c in found if c.startswith("curl") and "/v1/generate" in c)
    status = next(c for c in found if c.startswith("curl") and "/v1/status" in c)
    return [*scripts, generate, status]


def test_both_readmes_show_the_same_commands() -> None:
    english, korean = commands(ENGLISH), commands(KOREAN)
    assert essentials(korean) == essentials(english)
    assert [c.split()[0] for c in essentials(english)] == [
        "./scripts/serve",
        "./scripts/test",
        "curl",
        "curl",
    ]
    assert "POST" in essentials(english)[2] and "GET" in essentials(english)[3]
    assert [c for c in korean if c not in english] == []


def test_the_readmes_link_to_each_other_and_every_link_resolves() -> None:
    top = ENGLISH.read_text(encoding="utf-8").splitlines()[:5]
    assert any("](README.ko.md)" in line for line in top), "link it near the top"
    text = KOREAN.read_text(encoding="utf-8")
    assert "](README.md)" in text
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), target
