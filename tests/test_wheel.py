"""The package as pip installs it: the wheel carries every file of the package
that is not Python (templates, fonts, browser files, their licences) and stays
small enough to install quickly, fonts included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
MAX_WHEEL_BYTES = 15 * 1024 * 1024


def test_the_wheel_is_under_15_mb_and_carries_every_package_file(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", str(source), "--wheel-dir", str(dist)),
            *("--no-deps", "--no-build-isolation", "--no-index", "--quiet"),
        ],
        check=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = dist.glob("imagine-*.whl")
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, wheel.stat().st_size

    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
    package = source / "src"
    files = {
        path.relative_to(package).as_posix()
        for path in (package / "imagine").rglob("*")
        if path.is_file()
    }
    assert sorted(files - packed) == []
    assert "imagine/web/static/vendor/noto/NotoSansCJKkr-Regular.subset.otf" in packed
    assert "imagine/web/static/vendor/noto/LICENSE" in packed
