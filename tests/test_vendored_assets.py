"""The vendored browser files are exactly what vendor/SHA256SUMS lists, each
package with its licence, at the versions scripts/vendor-assets and
scripts/vendor-fonts pin and vendor/README.md names; and the server sends them
as what they are."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import imagine.web
from imagine.media.fonts import FONT_URLS, SHIPPED_FONTS

from conftest import RunningServer

VENDOR = Path(imagine.web.__file__).parent / "static" / "vendor"
SCRIPT = Path(__file__).parents[1] / "scripts" / "vendor-assets"
FONTS_SCRIPT = SCRIPT.with_name("vendor-fonts")
BOOKKEEPING = {"SHA256SUMS", "README.md"}


def listed() -> dict[str, str]:
    """SHA256SUMS as {path relative to vendor/: hex digest}."""
    sums: dict[str, str] = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    return sums


def pin(name: str) -> str:
    found = re.search(rf"^{name}=(\S+)", SCRIPT.read_text(), re.MULTILINE)
    assert found, f"{name} is not pinned in {SCRIPT}"
    return found.group(1)


def test_every_vendored_file_is_listed_and_matches_its_hash() -> None:
    present = {
        path.relative_to(VENDOR).as_posix() for path in VENDOR.rglob("*") if path.is_file()
    } - BOOKKEEPING
    sums = listed()
    assert sorted(present - sums.keys()) == [], "vendored but not in SHA256SUMS"
    assert sorted(sums.keys() - present) == [], "in SHA256SUMS but missing"
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_every_vendored_package_has_its_licence() -> None:
    packages = sorted(path for path in VENDOR.iterdir() if path.is_dir())
    assert [path.name for path in packages] == ["htmx", "noto", "swagger-ui"]
    for package in packages:
        licence = package / "LICENSE"
        assert licence.is_file() and licence.stat().st_size > 0, package
    assert (VENDOR / "swagger-ui" / "NOTICE").is_file()
    ofl = (VENDOR / "noto" / "LICENSE").read_text()
    assert "SIL OPEN FONT LICENSE Version 1.1" in ofl
    assert "Noto Sans: Copyright" in ofl and "Noto Sans CJK KR: © " in ofl


def test_the_pins_agree_and_htmx_stays_on_2_0() -> None:
    htmx, swagger_ui = pin("HTMX_VERSION"), pin("SWAGGER_UI_VERSION")
    assert re.fullmatch(r"2\.0\.\d+", htmx), htmx
    assert re.fullmatch(r"5\.\d+\.\d+", swagger_ui), swagger_ui
    assert f'version:"{htmx}"' in (VENDOR / "htmx" / "htmx.min.js").read_text()
    readme = (VENDOR / "README.md").read_text().splitlines()
    debian = re.findall(r'^NOTO_\w+_DEB = \("([^"]+)", "([^"]+)"\)', FONTS_SCRIPT.read_text(), re.M)
    assert [package for package, _ in debian] == ["fonts-noto-core", "fonts-noto-cjk"]
    pins = [("htmx.org", htmx), ("swagger-ui-dist", swagger_ui), *debian]
    for package, version in pins:
        rows = [line for line in readme if f"`{package}`" in line]
        assert len(rows) == 1 and f" {version} " in rows[0], (package, version, rows)


def test_vendored_files_are_served_as_what_they_are(
    sqlite_server: Callable[..., RunningServer],
) -> None:
    server = sqlite_server(workers=0)
    with server.client() as anonymous:
        htmx = anonymous.get("/static/vendor/htmx/htmx.min.js")
        css = anonymous.get("/static/vendor/swagger-ui/swagger-ui.css")
        fonts = [anonymous.get(url) for url in FONT_URLS]
        again = anonymous.get(
            "/static/vendor/htmx/htmx.min.js", headers={"If-None-Match": htmx.headers["etag"]}
        )
        missing = anonymous.get("/static/vendor/htmx/nothing.js")
        outside = anonymous.get("/static/..%2F..%2Fapp.py")
    assert htmx.status_code == 200
    assert htmx.content == (VENDOR / "htmx" / "htmx.min.js").read_bytes()
    assert re.match(r"(text|application)/javascript\b", htmx.headers["content-type"])
    assert css.headers["content-type"].startswith("text/css")
    for font, path in zip(fonts, SHIPPED_FONTS, strict=True):  # the engine's own files
        assert font.status_code == 200 and font.content == path.read_bytes()
        assert font.headers["content-type"] == f"font/{path.suffix[1:]}"
    assert again.status_code == 304
    for answer in (htmx, css, again, *fonts):
        assert answer.headers.get_list("x-content-type-options") == ["nosniff"]
        assert answer.headers["cache-control"] == "public, max-age=3600"
    for answer in (missing, outside):
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers.get_list("x-content-type-options") == ["nosniff"]
