"""`ternc serve`: an OpenAI-compatible HTTP server for any artifact or (interpreted) model.

Endpoints (the subset of the OpenAI API local apps use, as llama-server and MLC-LLM give them):

    GET  /v1/models                 the one model served
    POST /v1/completions            prompt (text or token ids) -> text; "stream": true -> server-sent events
    POST /v1/chat/completions       messages -> reply through the tokenizer's chat template; streaming too

Built on starlette (routing, SSE via StreamingResponse) and uvicorn. One model, one KV cache per
request: requests are QUEUED, not batched -- a lock serializes generation, so concurrent clients
are answered one after another (each request's tokens are exactly what `ternc generate` gives).
Bad requests get a 4xx with an OpenAI-style `{"error": {...}}` body, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}  # the OpenAI API's defaults


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_body(status: int, message: str, param=None, code=None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Engine:
    """The served model + tokenizer; `complete` runs one request (callers hold `lock`)."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tok, self.name = model, tokenizer, name
        self.lock = threading.Lock()
        self.created = int(time.time())
        meta = getattr(model, "meta", {}) or {}
        self.max_context = (meta.get("decoder") or {}).get("max_context") or meta.get("max_context")

    def params(self, body: dict) -> dict:
        def num(key, kind, default, lo=None, hi=None):
            v = body.get(key, default)
            if v is None:
                v = default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v):
                raise RequestError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'}", key)
            v = kind(v)
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise RequestError(400, f"'{key}' must be in [{lo}, {hi}], got {v}", key)
            return v

        if body.get("n", 1) not in (1, None):
            raise RequestError(400, "only n=1 is supported", "n")
        max_tokens = num("max_completion_tokens" if "max_completion_tokens" in body else "max_tokens", int, 16,
                         1, 1 << 20)
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
            raise RequestError(400, "'stop' must be a string or a list of non-empty strings", "stop")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError(400, "'seed' must be an integer", "seed")
        return dict(max_new_tokens=max_tokens,
                    temperature=num("temperature", float, _SAMPLING_DEFAULTS["temperature"], 0.0, 2.0),
                    top_p=num("top_p", float, _SAMPLING_DEFAULTS["top_p"], 1e-9, 1.0),
                    top_k=num("top_k", int, 0, 0, None), seed=seed, stop=stop or [])

    def prompt_ids(self, body: dict, chat: bool) -> list[int]:
        from .tokenizer import TokenizerError, encode_prompt

        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise RequestError(400, "'messages' must be a non-empty list", "messages")
            clean = []
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise RequestError(400, f"messages[{i}] must be an object with a 'role'", "messages")
                content = m.get("content", "")
                if isinstance(content, list):  # content parts: keep the text ones
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if not isinstance(content, str):
                    raise RequestError(400, f"messages[{i}].content must be a string", "messages")
                clean.append({"role": m["role"], "content": content})
            try:
                ids = encode_prompt(self.tok, messages=clean)
            except TokenizerError as e:
                raise RequestError(400, str(e), "messages") from None
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]
            if isinstance(prompt, str) and prompt:
                ids = encode_prompt(self.tok, prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                             for t in prompt):
                ids = list(prompt)
            else:
                raise RequestError(400, "'prompt' must be a non-empty string or list of token ids (one prompt)",
                                   "prompt")
        vocab = len(self.tok)
        if any(t < 0 or t >= vocab for t in ids):
            raise RequestError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
        if self.max_context and len(ids) >= self.max_context:
            raise RequestError(400, f"prompt has {len(ids)} tokens; this model serves a context of "
                                    f"{self.max_context}", "prompt", "context_length_exceeded")
        return ids

    def complete(self, ids: list[int], p: dict, on_piece=None) -> dict:
        """Generate for one request; `on_piece(text)` streams. Returns text, ids and finish reason."""
        from .api import generate
        from .tokenizer import StreamDecoder, eos_ids

        dec = StreamDecoder(self.tok)
        eos = eos_ids(self.tok, self.model)
        new: list[int] = []
        state = {"text": "", "stopped": False}

        class _Stop(Exception):
            pass

        def on_token(t):
            new.append(t)
            if t in eos:
                return
            piece = dec.push(t)
            if not piece:
                return
            text = state["text"] + piece
            for s in p["stop"]:
                cut = text.find(s)
                if cut >= 0:
                    piece = text[len(state["text"]):cut]
                    state["text"] = text[:cut]
                    state["stopped"] = True
                    if piece and on_piece:
                        on_piece(piece)
                    raise _Stop
            state["text"] = text
            if on_piece:
                on_piece(piece)

        limit = p["max_new_tokens"]
        if self.max_context:
            limit = min(limit, self.max_context - len(ids))
        try:
            generate(self.model, [ids], limit, eos_token_id=eos or None, callback=on_token,
                     temperature=p["temperature"], top_k=p["top_k"], top_p=p["top_p"], seed=p["seed"])
        except _Stop:
            pass
        if not state["stopped"]:  # flush what the stream held back (an incomplete character at the end)
            final = self.tok.decode([t for t in new if t not in eos], skip_special_tokens=True)
            if final.startswith(state["text"]) and len(final) > len(state["text"]):
                if on_piece:
                    on_piece(final[len(state["text"]):])
                state["text"] = final
        finish = "stop" if state["stopped"] or (new and new[-1] in eos) else "length"
        return {"text": state["text"], "ids": new, "finish_reason": finish}


def create_app(engine: Engine):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(status, message, param=None, code=None):
        return JSONResponse(_error_body(status, message, param, code), status_code=status)

    async def models(_request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": engine.name, "object": "model", "created": engine.created, "owned_by": "ternc"}]})

    async def parse(request: Request, chat: bool):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object")
        if body.get("model") not in (None, engine.name):
            raise RequestError(404, f"model {body.get('model')!r} does not exist; this server serves "
                                    f"{engine.name!r}", "model", "model_not_found")
        return body, engine.params(body), engine.prompt_ids(body, chat)

    def envelope(rid, chat, created, choice):
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": engine.name, "choices": [choice]}

    def handler(chat: bool):
        async def endpoint(request: Request):
            try:
                body, p, ids = await parse(request, chat)
            except RequestError as e:
                return error(e.status, e.message, e.param, e.code)
            rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
            created = int(time.time())
            if body.get("stream"):
                return StreamingResponse(_stream(rid, chat, created, ids, p), media_type="text/event-stream")
            loop = asyncio.get_running_loop()
            res = await loop.run_in_executor(None, _locked, ids, p, None)
            if isinstance(res, Exception):
                return error(500, f"generation failed: {res}")
            choice = ({"index": 0, "message": {"role": "assistant", "content": res["text"]},
                       "finish_reason": res["finish_reason"]} if chat else
                      {"index": 0, "text": res["text"], "logprobs": None, "finish_reason": res["finish_reason"]})
            out = envelope(rid, chat, created, choice)
            out["usage"] = {"prompt_tokens": len(ids), "completion_tokens": len(res["ids"]),
                            "total_tokens": len(ids) + len(res["ids"])}
            return JSONResponse(out)
        return endpoint

    def _locked(ids, p, on_piece):
        with engine.lock:  # queued: one generation at a time
            try:
                return engine.complete(ids, p, on_piece)
            except Exception as e:  # reported to the client; the server keeps serving
                return e

    async def _stream(rid, chat, created, ids, p):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        done = object()

        def on_piece(piece):
            loop.call_soon_threadsafe(q.put_nowait, piece)

        def work():
            res = _locked(ids, p, on_piece)
            loop.call_soon_threadsafe(q.put_nowait, done)
            return res

        fut = loop.run_in_executor(None, work)
        if chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            yield _sse(envelope(rid, True, created, first) | {"object": "chat.completion.chunk"})
        while True:
            piece = await q.get()
            if piece is done:
                break
            choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat else
                      {"index": 0, "text": piece, "logprobs": None, "finish_reason": None})
            chunk = envelope(rid, chat, created, choice)
            if chat:
                chunk["object"] = "chat.completion.chunk"
            yield _sse(chunk)
        res = await fut
        if isinstance(res, Exception):
            yield _sse(_error_body(500, f"generation failed: {res}"))
        else:
            choice = ({"index": 0, "delta": {}, "finish_reason": res["finish_reason"]} if chat else
                      {"index": 0, "text": "", "logprobs": None, "finish_reason": res["finish_reason"]})
            chunk = envelope(rid, chat, created, choice)
            if chat:
                chunk["object"] = "chat.completion.chunk"
            yield _sse(chunk)
        yield "data: [DONE]\n\n"

    async def not_found(request: Request, exc):
        return error(404, f"no route {request.method} {request.url.path}")

    async def bad_method(request: Request, exc):
        return error(405, f"method {request.method} not allowed on {request.url.path}")

    routes = [Route("/v1/models", models, methods=["GET"]),
              Route("/v1/completions", handler(False), methods=["POST"]),
              Route("/v1/chat/completions", handler(True), methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def load_engine(source, tokenizer=None, model_name: str | None = None) -> Engine:
    import ternc
    from .tokenizer import load_tokenizer

    p = Path(str(source))
    model = ternc.load_artifact(p) if (p.is_dir() and (p / "manifest.json").exists()) else ternc.load(source)
    if "decoder" not in (getattr(model, "meta", {}) or {}):
        raise ValueError(f"{source}: serving needs a decoder LM (a graph with attention and token-id input)")
    tok = load_tokenizer(model, tokenizer)
    return Engine(model, tok, model_name or p.name)


def serve(source, host: str = "127.0.0.1", port: int = 8000, tokenizer=None, model_name: str | None = None,
          ready=None) -> None:
    """Load `source` and serve it until interrupted. `ready(port)` is called once listening."""
    import uvicorn

    engine = source if isinstance(source, Engine) else load_engine(source, tokenizer, model_name)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(create_app(engine), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    print(f"[ternc] serving {engine.name!r} on http://{host}:{bound}/v1 (requests queued, one at a time)",
          file=sys.stderr, flush=True)
    if ready:
        ready(bound, server)
    server.run(sockets=[sock])


def serve_in_thread(source, host: str = "127.0.0.1", **kw) -> tuple[Any, int, threading.Thread]:
    """Start a server on a free port in a background thread (for tests and embedding): (server, port, thread)."""
    got: dict = {}
    ev = threading.Event()

    def ready(port, server):
        got["port"], got["server"] = port, server
        ev.set()

    t = threading.Thread(target=serve, args=(source, host, 0), kwargs={**kw, "ready": ready}, daemon=True)
    t.start()
    if not ev.wait(120):
        raise RuntimeError("server did not start")
    srv = got["server"]
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    return srv, got["port"], t
