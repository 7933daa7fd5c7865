"""The OpenAI-compatible server through the real `openai` client, against uvicorn on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from conftest import Server
from serve_helpers import png_data_url

QUESTION = [{"role": "user", "content": "which planet is the biggest ?"}]


def test_plain_completion_with_citations(client, engine):
    reply = client.chat.completions.create(model=engine.name, messages=QUESTION, max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content and reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5 and reply.usage.prompt_tokens > 10
    citations = reply.model_extra["citations"]
    assert citations[0]["id"] == "doc-0#0" and citations[0]["source"] == "corpus/astronomy.txt"
    assert [c["n"] for c in citations] == [1, 2, 3] and isinstance(citations[0]["score"], float)
    assert isinstance(reply.model_extra["cited"], list)
    bare = client.chat.completions.create(model=engine.name, messages=QUESTION, max_tokens=5, temperature=0,
                                          extra_body={"retrieval": False})
    assert bare.model_extra["citations"] == []
    assert [m.id for m in client.models.list().data] == [engine.name, engine.retrieval.embedder_name]


def test_streaming_sends_citations_first_then_the_same_text(client, engine):
    kwargs = dict(model=engine.name, messages=QUESTION, max_tokens=8, temperature=0.8, seed=3, stop=["zzz"])
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].model_extra["citations"][0]["id"] == "doc-0#0"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole and len(chunks) > 3  # one chunk per decoded piece
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 8


def test_image_input_and_stop(client, engine):
    parts = [{"type": "text", "text": "what colour is it"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
    messages = [{"role": "user", "content": parts}]
    full = client.chat.completions.create(model=engine.name, messages=messages, max_tokens=8, temperature=0,
                                          extra_body={"retrieval": False}).choices[0].message.content
    words = full.split()
    assert len(words) >= 2
    cut = client.chat.completions.create(model=engine.name, messages=messages, max_tokens=8, temperature=0,
                                         stop=[" " + words[1]], extra_body={"retrieval": False})
    assert cut.choices[0].finish_reason == "stop" and full.startswith(cut.choices[0].message.content)
    assert words[1] not in cut.choices[0].message.content.split()[1:]


def bad_requests(engine):
    """(request kwargs, expected error class, text the message has)."""
    broken = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    return [
        (dict(model="gpt-4", messages=QUESTION), openai.NotFoundError, "not found"),
        (dict(model=engine.name, messages=[{"role": "user", "content": "hello " * 300}]), openai.BadRequestError,
         "context"),
        (dict(model=engine.name, messages=broken), openai.BadRequestError, "does not decode"),
        (dict(model=engine.name, messages=QUESTION, max_tokens=0), openai.BadRequestError, "max_tokens"),
        (dict(model=engine.name, messages=QUESTION, max_tokens=10**6), openai.BadRequestError, "max_tokens"),
        (dict(model=engine.name, messages=[{"role": "robot", "content": "hi"}]), openai.BadRequestError, "role"),
        (dict(model=engine.name, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "https://example.com/a.png"}}]}]), openai.BadRequestError, "only data: URLs"),
    ]


def test_bad_requests_get_openai_errors_and_the_next_request_is_served(client, server, engine):
    for kwargs, error, text in bad_requests(engine):
        with pytest.raises(error, match=text) as caught:
            client.chat.completions.create(**kwargs)
        assert caught.value.body["type"] in ("invalid_request_error",) and 400 <= caught.value.status_code < 500
        assert client.chat.completions.create(model=engine.name, messages=QUESTION, max_tokens=2).usage.completion_tokens == 2
    raw = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": "x", "messages": [', timeout=30,
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    missing = httpx.post(server.url + "/v1/chat/completions", json={"model": engine.name}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    assert httpx.get(server.url + "/nowhere", timeout=30).json()["error"]["code"] == "not_found"


def test_a_client_that_disconnects_mid_stream_frees_its_row(client, server, engine):
    cancelled = engine.stats["cancelled"]
    body = {"model": engine.name, "messages": QUESTION, "max_tokens": 64, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the citations chunk; then hang up
    deadline = time.monotonic() + 20
    while engine.stats["cancelled"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats["cancelled"] == cancelled + 1
    assert client.chat.completions.create(model=engine.name, messages=QUESTION, max_tokens=3).usage.completion_tokens == 3


def test_concurrent_clients_are_batched(client, engine):
    before = dict(engine.stats)
    replies: list = [None] * 12
    go = threading.Barrier(len(replies))

    def ask(i):
        go.wait()
        replies[i] = client.chat.completions.create(model=engine.name, messages=QUESTION, max_tokens=12, seed=i)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(replies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.usage.completion_tokens == 12 for r in replies)
    assert engine.stats["batches"] - before["batches"] < len(replies) and engine.stats["largest_batch"] > 1


def test_embeddings_use_the_index_embedder(client, engine):
    name = engine.retrieval.embedder_name
    out = client.embeddings.create(model=name, input=["Jupiter is a planet", "bread"])
    assert [d.index for d in out.data] == [0, 1] and len(out.data[0].embedding) == 384
    assert abs(sum(x * x for x in out.data[0].embedding) - 1) < 1e-3  # normalised, as the index stores them
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_api_key_guards_every_route(engine):
    from openai import OpenAI

    from mmadapt.serve.app import create_app

    with Server(create_app(engine, api_key="s3cret")) as keyed:
        wrong = OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=engine.name, messages=QUESTION, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert httpx.get(keyed.url + "/health", timeout=30).status_code == 401
        right = OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
        assert right.chat.completions.create(model=engine.name, messages=QUESTION, max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(keyed.url + "/health", headers={"Authorization": "Bearer s3cret"}, timeout=30).json()["status"] == "ok"


def test_a_body_over_the_limit_is_refused_unread(engine):
    from mmadapt.serve.app import create_app

    with Server(create_app(engine, max_body_bytes=2000)) as small:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url()}}] * 30}]
        reply = httpx.post(small.url + "/v1/chat/completions", json={"model": engine.name, "messages": messages}, timeout=30)
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
        assert httpx.get(small.url + "/health", timeout=30).status_code == 200


def test_a_full_queue_answers_503(engine):
    from openai import OpenAI

    from mmadapt.serve import ChatEngine, EngineConfig
    from mmadapt.serve.app import create_app

    small = ChatEngine(engine.model, "small", EngineConfig(max_queue=1, max_batch_size=1))
    statuses: list[int] = []
    with Server(create_app(small)) as busy:
        client = OpenAI(base_url=busy.url + "/v1", api_key="x", max_retries=0)
        go = threading.Barrier(6)

        def ask():
            go.wait()
            try:
                client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hello"}],
                                               max_tokens=150, temperature=0)
                statuses.append(200)
            except openai.APIStatusError as e:
                statuses.append(e.status_code)

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
    small.close()


def test_cli_refuses_a_missing_model_with_exit_code_2(tmp_path, capsys):
    from mmadapt.cli import main

    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_the_cli_serves_in_a_real_uvicorn_process(model_dir):
    import os
    import socket
    import subprocess
    import sys

    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMADAPT_API_KEY": "k3y"}
    process = subprocess.Popen([sys.executable, "-m", "mmadapt.cli", "serve", str(model_dir), "--port", str(port),
                                "--name", "tiny"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the server did not start within 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", headers={"Authorization": "Bearer k3y"}).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=0)
        assert client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=3).usage.completion_tokens == 3
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 401  # the key from the environment
    finally:
        process.terminate()
        process.wait(timeout=30)
