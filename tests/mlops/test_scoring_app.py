"""The served model's body limit (snapper.mlops.scoring_app.BodyLimit), at the ASGI level."""

import asyncio
import json

from snapper.mlops.scoring_app import BodyLimit


def _run(headers: list[tuple[bytes, bytes]], chunks: list[bytes], limit: int) -> tuple[list[dict], int, bool]:
    """Feeds ``chunks`` as one request; returns what was sent, how many chunks the server read
    before its first answer, and whether the app behind the limit was called."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    read, sent, at_answer, called = [0], [], [None], [False]

    async def receive() -> dict:
        read[0] += 1
        return messages[read[0] - 1]

    async def send(message: dict) -> None:
        if at_answer[0] is None:
            at_answer[0] = read[0]
        sent.append(message)

    async def app(scope, receive, send) -> None:
        called[0] = True
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    asyncio.run(BodyLimit(app, limit)({"type": "http", "headers": headers}, receive, send))
    return sent, at_answer[0], called[0]


def test_an_oversized_body_is_read_to_its_end_before_the_413() -> None:
    """Answering before the client has sent its body made it see a broken pipe, not the 413."""
    chunks = [b"x" * 100] * 5
    for headers in ([(b"content-length", b"500")], []):  # declared length, chunked
        sent, at_answer, called = _run(headers, chunks, limit=250)
        assert sent[0]["status"] == 413 and not called
        assert at_answer == len(chunks), headers  # every chunk read first
        assert "over this server's limit of 250 bytes" in json.loads(sent[1]["body"])["cause"]


def test_a_body_within_the_limit_reaches_the_app() -> None:
    for headers in ([(b"content-length", b"200")], []):
        sent, _, called = _run(headers, [b"x" * 100] * 2, limit=250)
        assert called and sent[0]["status"] == 200
