"""The playground's request as code to copy: curl, the Python SDK and the CLI.

Built on the server from the same fields the form submits, quoted for the
shell (`shlex.quote`) and as JSON, with `$IMAGINE_API_KEY` in place of the
key: the real key never appears on a page."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

UPLOAD_PLACEHOLDER = "data:image/png;base64,…"


@dataclass(frozen=True)
class Snippets:
    curl: str
    python: str
    cli: str


def build_snippets(request: dict[str, Any], base_url: str) -> Snippets:
    """`request` holds the fields the form set (prompt first); images are URLs,
    with uploaded files shown as a placeholder data: URL."""
    body = json.dumps(request, indent=2, ensure_ascii=False)
    curl = (
        f"curl -X POST {shlex.quote(base_url + '/v1/generate')} \\\n"
        '  -H "Authorization: Bearer $IMAGINE_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d {shlex.quote(body)}"
    )
    return Snippets(curl=curl, python=_python(request, base_url), cli=_cli(request))


def _python(request: dict[str, Any], base_url: str) -> str:
    arguments = [repr(request.get("prompt", ""))]
    arguments += [f"{name}={value!r}" for name, value in request.items() if name != "prompt"]
    call = ",\n        ".join(arguments)
    return (
        "# export IMAGINE_API_KEY=imk_…\n"
        "from imagine.client import Client\n\n"
        f"with Client(base_url={base_url!r}) as client:\n"
        f"    task = client.run(\n        {call},\n    )\n"
        "    print(task.status, task.response)\n"
        '    client.download(task, "videos")'
    )


def _cli(request: dict[str, Any]) -> str:
    words = ["imagine", "generate", shlex.quote(str(request.get("prompt", "")))]
    for name, value in request.items():
        if name == "prompt":
            continue
        if name == "images":
            for image in value:
                words += ["--image", shlex.quote(image)]
        elif name != "callback_url":
            words += [f"--{name}", shlex.quote(str(value))]
    return "# export IMAGINE_API_KEY=imk_… IMAGINE_BASE_URL=…\n" + " ".join(words)
