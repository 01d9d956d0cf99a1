"""Streaming ``/v1/completions`` requests, many at once, each chunk timed when it reaches lem.

An asyncio loop on a thread of its own holds the HTTP connections (httpx); the caller (the adapter's
serve loop, on the main thread) submits requests and takes finished ones from a queue. A chunk's time
is ``time.perf_counter()`` when its server-sent-events line was read, the clock and point at which
the embedded engines time their tokens.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from lem.errors import LemError


class ServerAnswered(LemError):
    """The server refused or broke a request: one line naming the URL, the status and its message."""


@dataclass
class Chunk:
    time: float  # perf_counter when the chunk's line was read
    text: str
    token_ids: list[int] | None


@dataclass
class Streamed:
    """One request's streamed answer, as the server sent it."""

    request_id: int
    sent_time: float  # perf_counter when the request was sent
    chunks: list[Chunk] = field(default_factory=list)
    finish_reason: str | None = None
    finish_time: float | None = None  # when the chunk carrying finish_reason arrived
    usage: dict[str, Any] | None = None
    error: BaseException | None = None


def error_message(body: str) -> str:
    """The server's own message from an error body (OpenAI's {"error": {"message": ...}}, FastAPI's {"detail": ...})."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0][:300] if body.strip() else "(empty body)"
    if isinstance(payload, dict):
        err = payload.get("error", payload.get("detail", payload))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err).splitlines()[0][:300] if str(err) else "(no message)"
    return str(payload)[:300]


class StreamingClient:
    """Streams completions on a background event loop; ``submit`` from any thread, ``done`` is a queue of ``Streamed``."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float, max_connections: int) -> None:
        import httpx

        self.completions_url = base_url.rstrip("/") + "/completions"
        self.done: queue.Queue[Streamed] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lem-http", daemon=True)
        self._thread.start()
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))

        async def make() -> Any:
            return httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)

        self._client = self._run(make())
        self._futures: dict[int, Future[None]] = {}
        self._timeout_s = timeout_s

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def submit(self, request_id: int, body: dict[str, Any]) -> None:
        """Send one request now; its ``Streamed`` lands in ``done`` when the stream ends (or fails)."""
        future = asyncio.run_coroutine_threadsafe(self._stream(request_id, body), self._loop)
        self._futures[request_id] = future

    def drain(self) -> None:
        """Drop answers left from an earlier, abandoned serve (none after a clean one)."""
        while True:
            try:
                self.done.get_nowait()
            except queue.Empty:
                return

    def forget(self, request_id: int) -> None:
        self._futures.pop(request_id, None)

    def cancel_all(self) -> None:
        """Abandon every request in flight: closing its connection tells the server to abort it."""
        for future in list(self._futures.values()):
            future.cancel()
        self._futures.clear()

    def close(self) -> None:
        self.cancel_all()
        try:
            self._run(self._client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()

    async def _stream(self, request_id: int, body: dict[str, Any]) -> None:
        import httpx

        out = Streamed(request_id, time.perf_counter())
        try:
            async with self._client.stream("POST", self.completions_url, json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    raise ServerAnswered(f"{self.completions_url} answered HTTP {response.status_code}: {error_message(text)}")
                kind = response.headers.get("content-type", "")
                if "text/event-stream" not in kind:
                    raise ServerAnswered(
                        f"{self.completions_url} did not stream (Content-Type: {kind or 'none'}): lem needs stream=true answered "
                        "as server-sent events, to time every token"
                    )
                async for line in response.aiter_lines():
                    arrived = time.perf_counter()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    self._take(out, json.loads(data), arrived)
            if out.finish_reason is None:
                raise ServerAnswered(f"{self.completions_url} ended the stream of request {request_id} without a finish_reason")
        except asyncio.CancelledError:
            raise
        except httpx.TimeoutException:
            out.error = ServerAnswered(f"request {request_id} to {self.completions_url} got no answer for backend.openai.request_timeout_s={self._timeout_s:g} s")
        except httpx.HTTPError as e:
            out.error = ServerAnswered(f"request {request_id} to {self.completions_url} failed: {type(e).__name__}: {e}")
        except (ValueError, KeyError, TypeError) as e:
            out.error = ServerAnswered(f"{self.completions_url} sent a chunk lem cannot read for request {request_id}: {e}")
        except BaseException as e:  # noqa: BLE001 - handed to the serve loop, which raises it there
            out.error = e
        self.done.put(out)

    @staticmethod
    def _take(out: Streamed, payload: dict[str, Any], arrived: float) -> None:
        if "error" in payload and not payload.get("choices"):
            raise ServerAnswered(f"the server broke off request {out.request_id} mid-stream: {error_message(json.dumps(payload))}")
        if payload.get("usage"):
            out.usage = payload["usage"]
        for choice in payload.get("choices") or []:
            text = choice.get("text") or ""
            ids = choice.get("token_ids")
            if text or ids:
                out.chunks.append(Chunk(arrived, text, [int(t) for t in ids] if ids is not None else None))
            if choice.get("finish_reason"):
                out.finish_reason = str(choice["finish_reason"])
                out.finish_time = arrived


def get_json(url: str, headers: dict[str, str], timeout_s: float = 5.0) -> Any:
    """GET ``url`` and parse its JSON; ServerAnswered in one line when it cannot."""
    return _json_request("GET", url, headers, None, timeout_s)


def post_json(url: str, headers: dict[str, str], body: dict[str, Any], timeout_s: float = 30.0) -> Any:
    """POST ``body`` to ``url`` and parse its JSON answer; ServerAnswered in one line when it cannot."""
    return _json_request("POST", url, headers, body, timeout_s)


def _json_request(method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None, timeout_s: float) -> Any:
    import httpx

    try:
        response = httpx.request(method, url, headers=headers, json=body, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise ServerAnswered(f"{url} cannot be reached: {type(e).__name__}: {e}") from e
    if response.status_code != 200:
        raise ServerAnswered(f"{url} answered HTTP {response.status_code}: {error_message(response.text)}")
    try:
        return response.json()
    except ValueError as e:
        raise ServerAnswered(f"{url} did not answer JSON") from e


def auth_headers(api_key_env: str | None) -> dict[str, str]:
    """The Bearer token from ``$api_key_env`` (backend.openai.api_key_env), or no header."""
    import os

    return {"Authorization": f"Bearer {os.environ.get(api_key_env, '')}"} if api_key_env else {}


def served_models(base_url: str, headers: dict[str, str], timeout_s: float = 10.0) -> list[str]:
    """The model names ``GET <base_url>/models`` lists (OpenAI's {"data": [{"id": ...}]})."""
    answer = get_json(base_url.rstrip("/") + "/models", headers, timeout_s)
    data = answer.get("data") if isinstance(answer, dict) else None
    return [str(m.get("id")) for m in (data or []) if isinstance(m, dict)]
