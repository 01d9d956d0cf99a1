"""A small OpenAI-compatible completions server for tests, on 127.0.0.1 in a thread of the test process.

It "generates" words of the tiny model's vocabulary and streams them as server-sent events, one or
several tokens per chunk, and can misbehave the ways real servers do: no usage, an error mid-stream,
a slow first token, an answer that is not streamed, HTTP errors. It records every request body.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "."]


@dataclass
class Behaviour:
    model: str = "fake-model"
    tokens_per_chunk: int = 1
    usage: bool = True
    stop_after: int | None = None  # the model "stops" (EOS) after this many tokens
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    error_after_chunks: int | None = None  # an error event instead of chunk k
    stream: bool = True  # False: answer one JSON body even when asked to stream
    status: int = 200
    serialise: bool = False  # one request at a time (like llama.cpp's server)
    api_key: str | None = None  # every request must carry "Authorization: Bearer <api_key>"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeOpenAI:
    def __init__(self, tokenizer: Any, behaviour: Behaviour | None = None) -> None:
        self.tokenizer = tokenizer
        self.behaviour = behaviour or Behaviour()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _authorised(self) -> bool:
                key = fake.behaviour.api_key
                if key is None or self.headers.get("Authorization") == f"Bearer {key}":
                    return True
                self._json(401, {"error": {"message": "Invalid API key", "code": 401}})
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": fake.behaviour.model, "object": "model"}]})
                elif self.path == "/version":
                    self._json(200, {"version": "9.9.9-fake"})
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                if not self._authorised():
                    return
                if self.path == "/tokenize":
                    prompt = body["prompt"]
                    self._json(200, {"tokens": fake.tokenizer(prompt, add_special_tokens=False)["input_ids"]})
                    return
                if self.path != "/v1/completions":
                    self._json(404, {"detail": "Not Found"})
                    return
                b = fake.behaviour
                b.bodies.append(body)
                if b.status != 200:
                    self._json(b.status, {"error": {"message": "fake failure", "type": "BadRequestError", "code": b.status}})
                    return
                if body.get("model") != b.model:
                    self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}})
                    return
                if b.serialise:
                    with b.lock:
                        self._complete(body)
                else:
                    self._complete(body)

            def _complete(self, body: dict[str, Any]) -> None:
                b = fake.behaviour
                ids = fake.output_ids(body)
                prompt = body["prompt"]
                n_prompt = len(prompt) if isinstance(prompt, list) else len(fake.tokenizer(prompt, add_special_tokens=False)["input_ids"])
                finish = "length" if len(ids) >= body["max_tokens"] else "stop"
                if not b.stream:
                    self._json(200, {"choices": [{"index": 0, "text": fake.text(ids), "finish_reason": finish}]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Connection", "close")
                self.end_headers()
                time.sleep(b.first_token_delay_s)
                pieces = [ids[i:i + b.tokens_per_chunk] for i in range(0, len(ids), b.tokens_per_chunk)]
                for k, piece in enumerate(pieces):
                    if b.error_after_chunks is not None and k == b.error_after_chunks:
                        self._event({"error": {"message": "fake engine died", "type": "InternalServerError", "code": 500}})
                        return
                    choice: dict[str, Any] = {"index": 0, "text": fake.text(piece, leading_space=k > 0), "finish_reason": None}
                    if body.get("return_token_ids"):
                        choice["token_ids"] = piece
                    if k == len(pieces) - 1:
                        choice["finish_reason"] = finish
                    self._event({"object": "text_completion", "choices": [choice]})
                    time.sleep(b.token_delay_s)
                if b.usage and (body.get("stream_options") or {}).get("include_usage"):
                    self._event({"choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(ids) + (finish == "stop"), "total_tokens": 0}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _event(self, payload: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def output_ids(self, body: dict[str, Any]) -> list[int]:
        n = body["max_tokens"] if body.get("ignore_eos") or self.behaviour.stop_after is None else min(body["max_tokens"], self.behaviour.stop_after)
        vocab = self.tokenizer.convert_tokens_to_ids(WORDS)
        return [vocab[i % len(vocab)] for i in range(n)]

    def text(self, ids: list[int], leading_space: bool = False) -> str:
        return (" " if leading_space else "") + " ".join(self.tokenizer.convert_ids_to_tokens(ids))

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
