"""The OpenAI-compatible server on a tiny sequential system: real usage, extensions, errors, a real uvicorn."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import yaml
from conftest import make_sequential_config
from fastapi.testclient import TestClient

from recursivemas import System
from recursivemas.serve import create_app

MODEL = "tiny"
QUESTION = "What is 2 + 3?"


@pytest.fixture(scope="module")
def config(tiny_agents, tmp_path_factory) -> dict:
    """The conftest sequential system (Llama planner, Qwen2-MoE critic, GPT-2 solver), shared by this module."""
    return make_sequential_config(tiny_agents, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def system(config) -> System:
    return System.from_config(config)


@pytest.fixture(scope="module")
def client(system) -> TestClient:
    return TestClient(create_app(system, model_name=MODEL))


def chat(client: TestClient, question: str = QUESTION, **extra):
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": question}], **extra})


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["recursivemas"]["decoder"] == "solver"
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["agents"] == ["planner", "critic", "solver"]


@pytest.mark.parametrize("mode", ["latent", "text", "single"])
def test_chat_matches_system_run(client, system, mode):
    body = chat(client, mode=mode).json()
    expected = system.run([QUESTION], mode=mode)[0]  # greedy: the same answer and the same work
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    usage, ext = body["usage"], body["recursivemas"]
    assert usage["completion_tokens"] == expected.usage.generated_tokens > 0
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert ext["mode"] == mode and ext["rounds"] == expected.rounds and ext["batch"] == 1
    assert ext["forward_calls"] == expected.usage.forward_calls > 0
    assert ext["totals"]["input_positions"] == expected.usage.input_positions
    assert [(s["agent"], s["round"], s["action"], s["generated_tokens"]) for s in ext["steps"]] == [
        (s.agent, s.round, s.action, s.generated_tokens) for s in expected.usage.steps
    ]
    answer = [s for s in expected.usage.steps if s.action == "answer"][0]
    assert choice["finish_reason"] == ("length" if answer.generated_tokens == 6 else "stop")


def test_latent_usage_counts_only_the_decoders_answer(client, system):
    latent = chat(client, mode="latent").json()
    single = chat(client, mode="single").json()
    steps = latent["recursivemas"]["steps"]
    assert [(s["agent"], s["round"]) for s in steps if s["generated_tokens"]] == [("solver", 2)]
    answer = [s for s in steps if s["action"] == "answer"][0]
    assert latent["usage"]["completion_tokens"] == answer["generated_tokens"]
    assert latent["recursivemas"]["totals"]["latent_steps"] == 4 * 5  # planner, critic, solver, planner, critic
    # the decoder's prompt is its role prompt plus the M = 4 latent thoughts in its <<REFINED_PLAN>> slot
    assert latent["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"] + 4
    solver = system.agents["solver"]
    from recursivemas.prefix import prefix_length
    from recursivemas.slots import build_inputs

    assert single["usage"]["prompt_tokens"] == int(build_inputs(solver, [QUESTION], {})[1].sum())
    # its prompt prefix was encoded in its round-1 rollout and read from that cache in round 2
    assert latent["usage"]["prompt_tokens_details"] == {"cached_tokens": prefix_length(solver, QUESTION)}
    assert single["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_extensions_and_generation_settings(client, system):
    ext = chat(client, rounds=3, latent_steps=2).json()["recursivemas"]
    assert ext["rounds"] == 3 and ext["latent_steps"] == 2 and len(ext["steps"]) == 9
    assert all(s["latent_steps"] == 2 for s in ext["steps"] if s["action"] == "latent")
    text = chat(client, mode="text", rounds=1).json()
    answer = [s for s in text["recursivemas"]["steps"] if s["action"] == "answer"][0]
    assert text["usage"]["completion_tokens"] > answer["generated_tokens"]  # hand-offs count in text mode
    short = chat(client, max_tokens=2).json()
    assert [s["generated_tokens"] for s in short["recursivemas"]["steps"] if s["action"] == "answer"][0] <= 2
    assert chat(client, max_completion_tokens=1).json()["usage"]["completion_tokens"] == 1
    assert chat(client, max_completion_tokens=1).json()["choices"][0]["finish_reason"] == "length"
    sampled = [chat(client, temperature=1.0, seed=5).json() for _ in range(2)]
    assert sampled[0]["choices"] == sampled[1]["choices"] and sampled[0]["recursivemas"]["seed"] == 5
    assert system.config.generation.temperature == 0.0 and system.config.generation.max_new_tokens == 6  # restored


def test_completions_batch_matches_system_run(client, system):
    prompts = ["What is 2 + 3?", "Tom has 4 apples and eats one. How many are left?"]
    body = client.post("/v1/completions", json={"model": MODEL, "prompt": prompts}).json()
    expected = system.run(prompts, mode="latent")
    assert body["object"] == "text_completion"
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, expected[0].text), (1, expected[1].text)]
    assert body["usage"]["completion_tokens"] == sum(r.usage.generated_tokens for r in expected)
    assert {s["index"] for s in body["recursivemas"]["steps"]} == {0, 1}
    one = client.post("/v1/completions", json={"model": MODEL, "prompt": prompts[0], "mode": "single"}).json()
    assert one["choices"][0]["text"] == system.run(prompts[:1], mode="single")[0].text


def _events(response) -> list:
    lines = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streaming_sends_the_answer_then_done(client):
    plain = chat(client).json()
    response = chat(client, stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = _events(response)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": plain["choices"][0]["message"]["content"]}
    assert chunks[1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[2]["choices"] == [] and chunks[2]["usage"] == plain["usage"]
    assert len(_events(chat(client, stream=True))) == 2  # no usage chunk unless asked
    texts = _events(client.post("/v1/completions", json={"model": MODEL, "prompt": ["a?", "b?"], "stream": True}))
    assert [c["choices"][0]["index"] for c in texts] == [0, 1]


def test_concurrent_greedy_requests_share_a_batch(client, system):
    app_batcher = client.app.state.batcher
    questions = ["What is 2 + 3?", "Is 7 prime?", "What is 9 - 4?"]
    replies: dict[int, dict] = {}

    def ask(i: int) -> None:
        replies[i] = chat(client, questions[i]).json()

    with app_batcher._busy:  # the worker waits, so all three queue up
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        deadline = time.time() + 20
        while app_batcher.pending() < 3 and time.time() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=60)
    assert [replies[i]["recursivemas"]["batch"] for i in range(3)] == [3, 3, 3]
    expected = system.run(questions, mode="latent")
    assert [replies[i]["choices"][0]["message"]["content"] for i in range(3)] == [r.text for r in expected]


M = [{"role": "user", "content": QUESTION}]
BAD_REQUESTS = [
    ("chat", {"model": MODEL}, 400, "messages", "missing 'messages'"),
    ("chat", {"model": MODEL, "messages": []}, 400, "messages", "non-empty list"),
    ("chat", {"model": MODEL, "messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content", "is empty"),
    ("chat", {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content[0]", "text only"),
    ("chat", {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, *M]}, 400, "messages[0].role", "own role prompt"),
    ("chat", {"model": MODEL, "messages": [*M, {"role": "assistant", "content": "5"}, *M]}, 400, "messages[1].role", "exactly one user message"),
    ("chat", {"model": MODEL, "messages": [*M, *M]}, 400, "messages", "send exactly one"),
    ("chat", {"model": MODEL, "messages": M, "mode": "latentt"}, 400, "mode", "choose one of latent, text, single"),
    ("chat", {"model": MODEL, "messages": M, "rounds": 0}, 400, "rounds", "must be >= 1"),
    ("chat", {"model": MODEL, "messages": M, "rounds": "2"}, 400, "rounds", "must be an integer"),
    ("chat", {"model": MODEL, "messages": M, "latent_steps": -1}, 400, "latent_steps", "must be >= 0"),
    ("chat", {"model": "gpt-4o", "messages": M}, 404, "model", "serves 'tiny'"),
    ("chat", {"messages": M}, 400, "model", "missing 'model'"),
    ("chat", {"model": MODEL, "messages": M, "n": 2}, 400, "n", "'n' must be 1"),
    ("chat", {"model": MODEL, "messages": M, "stop": ["\n"]}, 400, "stop", "not supported"),
    ("chat", {"model": MODEL, "messages": M, "latent_step": 3}, 400, "latent_step", "Did you mean 'latent_steps'"),
    ("chat", {"model": MODEL, "messages": M, "temperature": -1}, 400, "temperature", ">= 0"),
    ("chat", {"model": MODEL, "messages": M, "top_p": 0}, 400, "top_p", "(0, 1]"),
    ("chat", {"model": MODEL, "messages": M, "max_tokens": 0}, 400, "max_tokens", ">= 1"),
    ("chat", {"model": MODEL, "messages": M, "max_tokens": 4, "max_completion_tokens": 5}, 400, "max_completion_tokens", "disagree"),
    ("chat", {"model": MODEL, "messages": M, "stream": "yes"}, 400, "stream", "true or false"),
    ("chat", {"model": MODEL, "messages": M, "stream_options": {"include_usage": True}}, 400, "stream_options", "only allowed"),
    ("completions", {"model": MODEL}, 400, "prompt", "missing 'prompt'"),
    ("completions", {"model": MODEL, "prompt": [1, 2, 3]}, 400, "prompt", "token-id prompts"),
    ("completions", {"model": MODEL, "prompt": ["ok?", ""]}, 400, "prompt[1]", "is empty"),
    ("completions", {"model": MODEL, "prompt": "ok?", "echo": True}, 400, "echo", "not supported"),
]


@pytest.mark.parametrize("endpoint,body,status,param,phrase", BAD_REQUESTS, ids=[f"{r[0]}-{r[3]}-{i}" for i, r in enumerate(BAD_REQUESTS)])
def test_malformed_requests_get_openai_errors(client, endpoint, body, status, param, phrase):
    response = client.post(f"/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert phrase in error["message"], error["message"]


def test_not_json_and_unknown_routes(client):
    response = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = client.post("/v1/chat/completions", json=["a list"])
    assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"]
    response = client.get("/v1/embeddings")
    assert response.status_code == 404 and "POST /v1/chat/completions" in response.json()["error"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_over_real_http(config, tmp_path):
    system_file = tmp_path / "system.yaml"
    system_file.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "base_dir"}))
    port = _free_port()
    command = [sys.executable, "-c", "from recursivemas.cli import main; main()", "serve", "--system", str(system_file),
               "--port", str(port), "--model-name", MODEL]
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert server.poll() is None, f"server exited early:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"server did not come up in 90 s:\n{log.read_text()}"
            time.sleep(0.3)
        request = urllib.request.Request(
            f"{base}/v1/chat/completions",
            data=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            body = json.load(r)
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
