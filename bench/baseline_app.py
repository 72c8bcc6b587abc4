"""The ceiling: the same framework and server answering a constant JSON envelope."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()

ANSWER = {"code": 200, "message": "success", "data": {"task_id": "task_123456789"}}


@app.get("/v1/status")
async def status() -> JSONResponse:
    return JSONResponse(ANSWER)


@app.post("/v1/generate")
async def generate() -> JSONResponse:
    return JSONResponse(ANSWER)
