"""The service's own browser files, mounted at `/static` from the installed
package: first-party scripts and the vendored third-party ones (vendor/), so no
page loads anything from another origin."""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

from imagine.api.security import SECURITY_HEADERS

STATIC_PATH = "/static"
# An hour: long enough that pages do not refetch a 2 MB bundle on every visit,
# short enough that an upgrade reaches browsers the same day.
CACHE_CONTROL = "public, max-age=3600"


class StaticAssets(StaticFiles):
    """`StaticFiles` whose answers (304s included) carry the security headers
    and a cache lifetime; a missing file is the app's ordinary JSON 404."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        for name, value in SECURITY_HEADERS:
            response.headers[name.decode()] = value.decode()
        response.headers["cache-control"] = CACHE_CONTROL
        return response


def mount_static(app: FastAPI) -> None:
    app.mount(STATIC_PATH, StaticAssets(packages=[("imagine.web", "static")]), name="static")
