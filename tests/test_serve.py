"""`ternc serve`: the official openai client on loopback, streaming, concurrency (queued), bad requests."""

from __future__ import annotations

import concurrent.futures as cf
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import ternc

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(hf_bitnet_folder):
    from ternc.serve import load_engine, serve_in_thread

    engine = load_engine(hf_bitnet_folder, model_name="tiny")
    srv, port, thread = serve_in_thread(engine)
    yield engine, port
    srv.should_exit = True
    thread.join(30)


def _client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)


def _want(engine, prompt_ids, n):
    """What `ternc generate` gives (greedy, stopping at the tokenizer's EOS), EOS itself dropped."""
    from ternc.tokenizer import eos_ids

    eos = eos_ids(engine.tok, engine.model)
    out = ternc.generate(engine.model, [prompt_ids], n, eos_token_id=eos)
    return [t for t in out[0, len(prompt_ids):].tolist() if t not in eos]


def test_models_and_completion_match_generate(server):
    engine, port = server
    c = _client(port)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0)
    ids = engine.tok("Hello")["input_ids"]
    want = _want(engine, ids, 8)
    assert r.choices[0].text == engine.tok.decode(want, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens >= len(want)


def test_streaming_chat_equals_non_streaming(server):
    engine, port = server
    c = _client(port)
    msgs = [{"role": "user", "content": "Say hi"}]
    full = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    pieces = [ch.choices[0].delta.content or "" for ch in
              c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, stream=True)]
    assert "".join(pieces) == full.choices[0].message.content
    ids = engine.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert full.choices[0].message.content == engine.tok.decode(_want(engine, list(ids), 6),
                                                                skip_special_tokens=True)


def test_seeded_sampling_repeats(server):
    _, port = server
    c = _client(port)
    kw = dict(model="tiny", prompt="abc", max_tokens=6, temperature=0.8, top_p=0.9, seed=5)
    assert c.completions.create(**kw).choices[0].text == c.completions.create(**kw).choices[0].text


def test_concurrent_requests_are_queued_and_each_exact(server):
    engine, port = server
    prompts = ["one", "two two", "three", "four 4"]

    def ask(p):
        return _client(port).completions.create(model="tiny", prompt=p, max_tokens=5, temperature=0).choices[0].text

    with cf.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(ask, prompts))
    for p, text in zip(prompts, got):
        assert text == engine.tok.decode(_want(engine, engine.tok(p)["input_ids"], 5), skip_special_tokens=True)


def _post(port, path, body: bytes):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"prompt": ""}).encode(), 400, "'prompt'"),
    (json.dumps({"prompt": "x", "max_tokens": "many"}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": "x", "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({"prompt": [1, 99999]}).encode(), 400, "token ids"),
    (json.dumps({"prompt": "x", "n": 3}).encode(), 400, "n=1"),
    (json.dumps({"prompt": "x", "model": "gpt-4"}).encode(), 404, "does not exist"),
])
def test_bad_requests_get_4xx_and_server_keeps_serving(server, body, status, needle):
    _, port = server
    code, payload = _post(port, "/v1/completions", body)
    assert code == status and needle in payload["error"]["message"]
    code, payload = _post(port, "/v1/completions", json.dumps({"prompt": "ok", "max_tokens": 2,
                                                               "temperature": 0}).encode())
    assert code == 200 and payload["choices"][0]["finish_reason"] in ("length", "stop")


def test_bad_chat_messages_and_unknown_route(server):
    _, port = server
    code, payload = _post(port, "/v1/chat/completions", json.dumps({"messages": "hi"}).encode())
    assert code == 400 and "messages" in payload["error"]["message"]
    code, payload = _post(port, "/v1/embeddings", b"{}")
    assert code == 404
    assert np.isfinite(code)
