"""The HTTP endpoint (`python -m real serve`): request validation, live arrivals, and the tiny random Mixtral
served over HTTP on the CPU: every request answered once, with exactly its tokens, equal to HF's greedy output."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest

from policies import Priority
from real.api import Api, BadRequest, Codec, parse_completion
from real.arrivals import ArrivalError, LiveArrivals

CODEC = Codec(vocab_size=128)


def parse(body, max_len: int = 64):
    return parse_completion(body, CODEC, max_len, Priority.BE, default_max_tokens=4)


@pytest.mark.parametrize("body, prompt, max_tokens, priority", [
    ({"prompt": [1, 2, 3]}, [1, 2, 3], 4, Priority.BE),
    ({"prompt": [5], "max_tokens": 7, "priority": "LS"}, [5], 7, Priority.LS),
    ({"prompt": [5], "priority": "be", "temperature": 0.3, "model": "x"}, [5], 4, Priority.BE),
    ({"prompt": [0, 127], "max_tokens": 62, "priority": 0, "stream": False, "n": 1}, [0, 127], 62, Priority.LS),
])
def test_valid_completions_parse(body, prompt, max_tokens, priority):
    parsed = parse(body)
    assert (parsed.prompt_ids, parsed.max_tokens, parsed.priority) == (prompt, max_tokens, priority)
    assert not parsed.stream


def test_a_streamed_completion_parses_with_its_options():
    parsed = parse({"prompt": [1], "stream": True, "stream_options": {"include_usage": True}})
    assert parsed.stream and parsed.include_usage
    assert not parse({"prompt": [1], "stream": True}).include_usage


@pytest.mark.parametrize("body, message", [
    ([1, 2], "JSON object"),
    ({"max_tokens": 3}, "`prompt` is required"),
    ({"prompt": []}, "non-empty"),
    ({"prompt": [1, "a"]}, "token ids"),
    ({"prompt": [1, True]}, "token ids"),
    ({"prompt": [128]}, "outside the vocabulary"),
    ({"prompt": [-1]}, "outside the vocabulary"),
    ({"prompt": "hello"}, "list of token ids"),  # no tokenizer for a 128-token vocabulary
    ({"prompt": [1], "max_tokens": 0}, "max_tokens"),
    ({"prompt": [1], "max_tokens": 2.5}, "max_tokens"),
    ({"prompt": [1], "max_tokens": True}, "max_tokens"),
    ({"prompt": [1] * 60, "max_tokens": 5}, "KV slot length 64"),
    ({"prompt": [1], "priority": "urgent"}, "`priority`"),
    ({"prompt": [1], "stream": "yes"}, "`stream` must be true or false"),
    ({"prompt": [1], "stream_options": {"include_usage": True}}, "needs `\"stream\": true`"),
    ({"prompt": [1], "stream": True, "stream_options": {"include_usage": 1}}, "`stream_options`"),
    ({"prompt": [1], "n": 2}, "`n` is not supported"),
])
def test_bad_completions_are_refused_with_a_message(body, message):
    with pytest.raises(BadRequest, match=message):
        parse(body)


def test_live_arrivals_admit_in_order_and_refuse_once_closed():
    arrivals = LiveArrivals(kv_unit_tokens=64, clock=iter(range(100)).__next__)
    with pytest.raises(ArrivalError):
        arrivals.submit([1], 2, Priority.BE)  # the loop has not started
    arrivals.start(0.0)
    a = arrivals.submit([1, 2], 2, Priority.BE)
    b = arrivals.submit([3], 1, Priority.LS)
    assert arrivals.is_due(lambda: 0.0)
    due = arrivals.due(lambda: 0.0)
    assert [r.request_id for r in due] == [0, 1] and due[0].arrival_s < due[1].arrival_s
    assert due[0].kv_unit_tokens == 64 and due[1].priority == Priority.LS
    assert arrivals.prompt_ids(due[0]) == [1, 2] and not arrivals.is_due(lambda: 0.0)
    arrivals.close()
    assert arrivals.closed
    with pytest.raises(ArrivalError):
        arrivals.submit([1], 1, Priority.BE)
    arrivals.finished(a.request, [7, 8])
    assert a.done.is_set() and a.output_ids == [7, 8] and a.error is None
    arrivals.fail_all("stopped")
    assert b.done.is_set() and b.error == "stopped" and b.output_ids is None


def test_a_streamed_ticket_gets_its_tokens_in_order_then_the_end_or_the_failure():
    arrivals = LiveArrivals(clock=iter(range(100)).__next__)
    arrivals.start(0.0)
    a = arrivals.submit([1], 3, Priority.LS, stream=True)
    b = arrivals.submit([2], 2, Priority.BE, stream=True)
    c = arrivals.submit([3], 2, Priority.BE)
    arrivals.tokens(a.request.request_id, [5])
    arrivals.tokens(a.request.request_id, [6, 7])
    arrivals.tokens(c.request.request_id, [9])  # not streamed: nothing kept
    arrivals.finished(a.request, [5, 6, 7])
    assert [a.stream.get_nowait() for _ in range(3)] == [[5], [6, 7], None] and a.output_ids == [5, 6, 7]
    arrivals.tokens(b.request.request_id, [4])
    arrivals.fail_all("stopped")
    assert [b.stream.get_nowait() for _ in range(2)] == [[4], None] and b.error == "stopped"
    assert c.stream is None and c.error == "stopped"


def test_a_failed_stream_ends_with_an_error_chunk():
    arrivals = LiveArrivals()
    api = Api(arrivals, CODEC, "tiny", max_len=64)
    arrivals.start(0.0)
    admitted = api.admit({"prompt": [1, 2], "max_tokens": 3, "stream": True})
    arrivals.tokens(admitted.ticket.request.request_id, [11])
    arrivals.fail_all("the server stopped")
    chunks = list(api.chunks(admitted))
    assert chunks[0]["choices"][0]["token_ids"] == [11] and chunks[0]["choices"][0]["finish_reason"] is None
    assert chunks[1] == {"error": {"message": "the server stopped", "type": "server_error"}} and len(chunks) == 2
    assert 'qllm_requests_total{priority="BE",outcome="error"} 1' in api.metrics.render()


def test_a_client_that_leaves_a_stream_is_counted_as_left_and_no_longer_in_flight():
    arrivals = LiveArrivals()
    api = Api(arrivals, CODEC, "tiny", max_len=64)
    arrivals.start(0.0)
    admitted = api.admit({"prompt": [1, 2], "max_tokens": 3, "stream": True, "priority": "LS"})
    assert 'qllm_requests_in_flight{priority="LS"} 1' in api.metrics.render()
    arrivals.tokens(admitted.ticket.request.request_id, [11])
    chunks = api.chunks(admitted)
    next(chunks)  # the first tokens went out; then the connection broke (real.api's handler stops reading)
    chunks.close()
    text = api.metrics.render()
    assert 'qllm_requests_total{priority="LS",outcome="left"} 1' in text
    assert 'qllm_requests_in_flight{priority="LS"} 0' in text
    assert 'qllm_time_to_first_token_seconds_count{priority="LS"} 1' in text
    assert 'qllm_generated_tokens_total{priority="LS"} 1' in text


def test_a_stopping_server_drains_the_answers_being_written():
    api = Api(LiveArrivals(), CODEC, "tiny", max_len=64)
    with api.answer():
        assert api.answering == 1 and not api.drain(timeout_s=0.05)
    assert api.answering == 0 and api.drain(timeout_s=0.0)


CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Preempt?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c  d\n"}],
]


@pytest.mark.parametrize("messages", CHATS)
def test_chat_prompts_are_mistral_commons_v1_instruct_encoding(messages):
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from real.chat import chat_prompt_ids
    from sim.workload.tokenizer import load_tokenizer

    reference = MistralTokenizer.v1().encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
    assert chat_prompt_ids(messages, load_tokenizer()) == reference


@pytest.mark.parametrize("messages, message", [
    ("hi", "non-empty list"),
    ([], "non-empty list"),
    ([{"role": "tool", "content": "x"}], "`role`"),
    ([{"role": "user", "content": ["x"]}], "content` must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "only one `system`"),
    ([{"role": "system", "content": "s"}, {"role": "system", "content": "t"}, {"role": "user", "content": "a"}],
     "only one `system`"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "ending with user"),
    ([{"role": "system", "content": "s"}], "ending with user"),
])
def test_bad_chats_are_refused_with_a_message(messages, message):
    from sim.workload.tokenizer import load_tokenizer

    codec = Codec(32000, load_tokenizer())
    with pytest.raises(BadRequest, match=message):
        parse_completion({"messages": messages}, codec, 256, Priority.BE, 4, chat=True)
    with pytest.raises(BadRequest, match="no tokenizer here, which chat needs"):
        parse_completion({"messages": CHATS[0]}, CODEC, 64, Priority.BE, 4, chat=True)
    with pytest.raises(BadRequest, match="`messages` is required"):
        parse_completion({"prompt": [1]}, codec, 64, Priority.BE, 4, chat=True)


def test_a_chat_completion_is_answered_as_openais_chat_objects():
    """A chat request (max_completion_tokens, LS): its prompt is the instruct encoding; streamed, the first
    chunk's delta names the assistant and the deltas join to the text; unstreamed, one assistant message."""
    from sim.workload.tokenizer import load_tokenizer

    arrivals = LiveArrivals()
    arrivals.start(0.0)
    api = Api(arrivals, Codec(32000, load_tokenizer()), "mixtral", max_len=256, timeout_s=10)
    body = {"messages": CHATS[1], "max_completion_tokens": 3, "priority": "LS", "stream": True}
    admitted = api.admit(body, chat=True)
    request = admitted.ticket.request
    assert arrivals.due(lambda: 0.0) == [request]  # taken, as the serving loop would, before the next comes
    assert request.num_output_tokens == 3 and request.priority == Priority.LS
    assert admitted.ticket.prompt_ids[:4] == [1, 733, 16289, 28793]  # <s> [INST]
    output = api.codec.processor.encode("Yes, at once.")[:3]
    arrivals.tokens(request.request_id, output[:1])
    arrivals.tokens(request.request_id, output[1:])
    arrivals.finished(request, output)
    chunks = list(api.chunks(admitted))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and "role" not in chunks[1]["choices"][0]["delta"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == api.codec.decode(output)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    answers = {}
    client = threading.Thread(target=lambda: answers.update(r=api.complete({**body, "stream": False}, chat=True)))
    client.start()
    deadline = time.monotonic() + 10
    while not arrivals.is_due(lambda: 0.0) and time.monotonic() < deadline:
        time.sleep(0.001)
    [second] = arrivals.due(lambda: 0.0)
    arrivals.finished(second, output)
    client.join(timeout=10)
    status, answer = answers["r"]
    assert status == 200 and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": api.codec.decode(output)}
    assert answer["usage"]["completion_tokens"] == 3


def test_a_closed_server_answers_503_and_a_bad_body_400():
    arrivals = LiveArrivals()
    api = Api(arrivals, CODEC, "tiny", max_len=64)
    status, body = api.complete({"prompt": [1]})
    assert status == 503 and "not accepting" in body["error"]["message"]
    status, body = api.complete({"prompt": "text"})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies import QLLM  # noqa: E402
from real import run as real_run  # noqa: E402
from real.live import LiveServer, LiveSpec, results  # noqa: E402


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("frontend, host_cpu", [("process", None), ("thread", None), ("process", -1), ("thread", -1)])
def test_http_serving_answers_every_request_once_with_hf_greedy_tokens(tmp_path, frontend, host_cpu):
    """Ten requests (more than the six KV slots; BE first, then LS ones that preempt them) posted at once
    over HTTP: each answered once, with exactly `max_tokens` tokens, equal to HF's greedy generation. Also with
    the serving loop on a CPU of its own (`engine.host_cpu`), where the machine has two."""
    if host_cpu is not None and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    real_run.release_engine()
    cpus = os.sched_getaffinity(0)
    spec = LiveSpec(QLLM(max_batch_size=4), "qllm", real_run.EngineSettings(num_slots=6, host_cpu=host_cpu),
                    max_len=48, port=0, max_batch_size=4, frontend=frontend)
    live = LiveServer.build(spec)
    bodies = [{"prompt": [3 + (5 * i + j) % 120 for j in range(4 + (7 * i) % 17)], "max_tokens": 3 + i % 4,
               "priority": "LS" if i >= 7 else "BE"} for i in range(10)]
    answers: dict[int, tuple[int, dict]] = {}
    extra: list[tuple[int, dict]] = []

    def clients(url: str) -> None:
        def one(i: int) -> None:
            answers[i] = post(f"{url}/v1/completions", bodies[i])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        extra.append(post(f"{url}/v1/completions", b"{not json"))
        extra.append(post(f"{url}/v1/nothing", {"prompt": [1]}))
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
            extra.append((response.status, json.loads(response.read())))
        live.arrivals.close()

    outcome = live.run(on_ready=lambda url: threading.Thread(target=clients, args=(url,)).start())
    assert sorted(answers) == list(range(10))
    assert all(status == 200 for status, _ in answers.values()), {i: a for i, a in answers.items() if a[0] != 200}
    assert [status for status, _ in extra] == [400, 404, 200] and extra[2][1]["data"][0]["id"] == "tiny-mixtral"
    ids = [body["qllm"]["request_id"] for _, body in answers.values()]
    assert sorted(ids) == sorted(r.request_id for r in outcome.requests) == list(range(10))  # each exactly once
    model = live.server.engine.model
    for i, (_, body) in answers.items():
        tokens = body["choices"][0]["token_ids"]
        assert len(tokens) == body["usage"]["completion_tokens"] == bodies[i]["max_tokens"]
        assert body["usage"]["prompt_tokens"] == len(bodies[i]["prompt"])
        with torch.inference_mode():
            ref = model.generate(torch.tensor([bodies[i]["prompt"]]), max_new_tokens=bodies[i]["max_tokens"],
                                 min_new_tokens=bodies[i]["max_tokens"], do_sample=False)
        assert tokens == ref[0, len(bodies[i]["prompt"]):].tolist()
    for r in outcome.requests:
        assert r.num_generated_tokens == r.num_output_tokens and r.arrival_s <= r.first_token_s <= r.finish_s
    assert live.server.engine.pool.num_free == 6  # every slot given back
    table, summary = results(outcome, spec, tmp_path, live.placement.loop)
    assert len(table) == 10 and set(table.source) == {"real"}
    assert summary["run"]["frontend"] == frontend and summary["run"]["mode"] == {"process": "http"}.get(frontend, "http-thread")
    assert summary["run"]["host_cpu"] == (None if host_cpu is None else max(cpus))  # the CPU it ran on
    assert os.sched_getaffinity(0) == cpus  # given back
    assert (table.priority == "LS").sum() == 3
    if frontend == "process":  # each submission's way through the pipe, on the loop's clock, in order
        transit = live.frontend.arrivals.transit_table().set_index("request_id").sort_index()
        assert list(transit.index) == list(range(10))
        arrived = {r.request_id: r.arrival_s for r in outcome.requests}
        assert (transit.arrival_s == pd.Series(arrived)).all()
        assert (transit.arrival_s <= transit.sent_s).all() and (transit.sent_s <= transit.seen_s).all()
        assert (transit.seen_s <= transit.received_s).all()


@pytest.mark.parametrize("frontend", ["thread", "process"])
def test_a_request_posted_before_the_loop_starts_waits_for_it_instead_of_being_refused(monkeypatch, frontend):
    """Clients may post as soon as the server is ready, before its loop's clock starts: the HTTP server answers
    only once the loop has started, so such a request is served, not refused (503). The loop's start is delayed
    here, as a slow one (the stall watch's thread, a loaded machine) delays it."""
    import real.live
    real_run.release_engine()
    spec = LiveSpec(QLLM(max_batch_size=4), "qllm", real_run.EngineSettings(num_slots=4), max_len=48, port=0,
                    max_batch_size=4, frontend=frontend)
    live = LiveServer.build(spec)
    watched = real.live.watched

    def slow_start(*args):
        time.sleep(0.5)
        return watched(*args)

    monkeypatch.setattr(real.live, "watched", slow_start)
    answers = []

    def client(url: str) -> None:
        answers.append(post(f"{url}/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 2, "priority": "LS"}))
        live.arrivals.close()

    live.run(on_ready=lambda url: threading.Thread(target=client, args=(url,)).start())
    assert [status for status, _ in answers] == [200], answers


def test_loadgen_posts_a_trace_with_the_prompts_a_replay_feeds(tmp_path):
    """real.loadgen against a live server: every trace request answered with its output length, and the
    prompt ids it sends are those `real run` feeds for the same seed (so the two runs can be compared)."""
    from policies import Request
    from real.loadgen import prompt_ids, replay, summary
    from real.run import prompt_token_ids
    from sim.workload import WorkloadConfig, generate_trace

    request = Request(5, 0.0, 12, 3)
    assert prompt_ids(7, 128, 5, 12) == prompt_token_ids(7, 128)(request)
    real_run.release_engine()
    spec = LiveSpec(QLLM(max_batch_size=4), "qllm", real_run.EngineSettings(num_slots=8), max_len=1280, port=0,
                    max_batch_size=4)
    live = LiveServer.build(spec)
    trace = generate_trace(WorkloadConfig(rate=200.0, num_requests=12, output_mode="fixed", fixed_output_tokens=3), 4)
    tables = []

    def client(url: str) -> None:
        tables.append(replay(url, trace, seed=4))
        live.arrivals.close()

    outcome = live.run(on_ready=lambda url: threading.Thread(target=client, args=(url,)).start())
    table = tables[0]
    assert len(table) == 12 and (table.status == 200).all() and (table.completion_tokens == 3).all()
    assert sorted(table.server_request_id) == sorted(r.request_id for r in outcome.requests)
    assert table.priority.tolist() == trace.priority.tolist()
    assert "12 of 12 requests answered 200" in summary(table)


def test_waiting_for_arrivals_survives_signals():
    """Ctrl-C runs the server's handler while the loop waits for a submission: the wait must still return.
    A SimpleQueue's get(timeout) (CPython 3.11) hung for good once a handler ran during it, and `real serve`
    hung instead of stopping; 200 signals in a second caught it in 3 of 3 runs."""
    import subprocess
    import sys

    script = """
import os, signal, sys, threading, time
from real.arrivals import LiveArrivals
arrivals = LiveArrivals()
signal.signal(signal.SIGINT, lambda signum, frame: sys.stderr.write("."))
def fire():
    for _ in range(200):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.002)
threading.Thread(target=fire, daemon=True).start()
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:
    arrivals.wait(0.0)
print("returned")
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("LiveArrivals.wait hung after a signal")
    assert done.returncode == 0 and "returned" in done.stdout, done.stderr


def test_servecheck_reports_a_server_that_dies_instead_of_waiting(tmp_path):
    """real.servecheck: a `real serve` that exits before it answers is an error naming its last line."""
    from real.servecheck import serve_trace

    trace = tmp_path / "trace.csv"
    trace.write_text("request_id,arrival_s,prompt_tokens,output_tokens,priority\n0,0.0,4,2,LS\n")
    with pytest.raises(RuntimeError, match="before serving: error: engine.max_len must be set"):
        serve_trace(trace, 0, ["engine.max_len=null"], tmp_path / "http", port=0, start_timeout_s=120)


def test_streamed_text_pieces_join_to_the_whole_text():
    """Pieces of a streamed completion, one token at a time, join to the text of all its tokens; a token that
    ends inside a character's bytes (byte fallback) yields nothing until the character is whole."""
    from real.api import TextStream
    from sim.workload.tokenizer import load_tokenizer

    codec = Codec(32000, load_tokenizer())
    ids = codec.processor.encode("Préemption: 先到先得 🙂 ok 𝒳 ꙮ", add_bos=False)
    stream = TextStream(codec)
    pieces = [stream.add([token]) for token in ids] + [stream.flush()]
    assert "".join(pieces) == codec.decode(ids) and "\ufffd" not in "".join(pieces)
    assert "" in pieces[:-1]  # 𝒳 and ꙮ: byte-fallback tokens


@pytest.mark.parametrize("frontend", ["process", "thread"])
def test_http_streaming_sends_each_pass_tokens_as_they_reach_the_host(tmp_path, frontend):
    """Streamed requests (OpenAI's server-sent events), LS ones preempting BE ones, over the tiny model: the
    chunks' token ids join to HF's greedy output, the last chunk says `length`, a usage chunk follows when
    asked, and the client's first token comes before its last chunk; non-streamed requests are served beside."""
    from real.loadgen import post_stream

    real_run.release_engine()
    spec = LiveSpec(QLLM(max_batch_size=4), "qllm", real_run.EngineSettings(num_slots=6), max_len=48, port=0,
                    max_batch_size=4, frontend=frontend)
    live = LiveServer.build(spec)
    bodies = [{"prompt": [7 + (3 * i + j) % 110 for j in range(5 + (5 * i) % 13)], "max_tokens": 4 + i % 5,
               "priority": "LS" if i % 3 == 2 else "BE", "stream_options": {"include_usage": i % 2 == 0}}
              for i in range(8)]
    answers: dict[int, tuple] = {}

    def clients(url: str) -> None:
        def one(i: int) -> None:
            answers[i] = post_stream(url, bodies[i], timeout_s=120) if i != 7 else \
                post(f"{url}/v1/completions", {k: v for k, v in bodies[i].items() if k != "stream_options"})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        post(f"{url}/v1/completions", {"prompt": "no tokenizer", "priority": "LS"})  # refused: 400
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            scraped.append(response.read().decode())
        live.arrivals.close()

    scraped: list[str] = []
    outcome = live.run(on_ready=lambda url: threading.Thread(target=clients, args=(url,)).start())
    assert sorted(answers) == list(range(8)) and len(outcome.requests) == 8
    # GET /metrics, from the front end's counts: every answer once by class, its tokens, none in flight
    series = dict(line.rsplit(" ", 1) for line in scraped[0].splitlines() if not line.startswith("#"))
    for cls in ("LS", "BE"):
        asked = [b for b in bodies if b["priority"] == cls]
        assert series[f'qllm_requests_total{{priority="{cls}",outcome="ok"}}'] == str(len(asked))
        assert series[f'qllm_generated_tokens_total{{priority="{cls}"}}'] == str(sum(b["max_tokens"] for b in asked))
        assert series[f'qllm_requests_in_flight{{priority="{cls}"}}'] == "0"
        assert series[f'qllm_time_to_first_token_seconds_count{{priority="{cls}"}}'] == str(len(asked))
        assert series[f'qllm_answer_seconds_bucket{{priority="{cls}",le="+Inf"}}'] == str(len(asked))
    assert series['qllm_requests_total{priority="LS",outcome="refused"}'] == "1"
    model = live.server.engine.model
    for i, answer in answers.items():
        assert answer[0] == 200
        tokens = answer[1]["token_ids"] if i != 7 else answer[1]["choices"][0]["token_ids"]
        with torch.inference_mode():
            ref = model.generate(torch.tensor([bodies[i]["prompt"]]), max_new_tokens=bodies[i]["max_tokens"],
                                 min_new_tokens=bodies[i]["max_tokens"], do_sample=False)
        assert tokens == ref[0, len(bodies[i]["prompt"]):].tolist()
        if i != 7:
            status, body, first = answer
            assert body["finish_reason"] == "length" and first is not None
            assert body["usage"]["completion_tokens"] == bodies[i]["max_tokens"]
            assert ("prompt_tokens" in body["usage"]) == (i % 2 == 0)  # the usage chunk only when asked
    assert live.server.streamed == {} and live.server.engine.pool.num_free == 6


def test_the_front_end_process_reports_a_taken_port_and_a_bad_tokenizer_before_any_weights(tmp_path):
    import socket

    from real.frontend import FrontendProcess

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with pytest.raises(OSError, match="in use"):
        FrontendProcess.launch("127.0.0.1", taken.getsockname()[1], "tiny-mixtral", 128, 48, "BE", 4, None)
    taken.close()
    with pytest.raises(ValueError, match="not found"):
        FrontendProcess.launch("127.0.0.1", 0, "tiny-mixtral", 128, 48, "BE", 4, str(tmp_path / "no.model"))


def test_the_front_end_process_answers_once_started_and_exits_with_the_engine():
    """A client that connects before the serving loop starts waits for it (health included); once the
    engine's end of the pipe closes (its process gone), the child answers its waiting clients with an error
    and exits."""
    from real.frontend import FrontendProcess

    frontend = FrontendProcess.launch("127.0.0.1", 0, "tiny-mixtral", 128, 48, "BE", 4, None)
    try:
        with pytest.raises(TimeoutError):
            urllib.request.urlopen(f"{frontend.url}/health", timeout=0.5)
        frontend.arrivals.start(time.perf_counter())
        with urllib.request.urlopen(f"{frontend.url}/health", timeout=10) as response:
            assert response.status == 200
        answer = {}
        client = threading.Thread(target=lambda: answer.update(r=post(f"{frontend.url}/v1/completions",
                                                                         {"prompt": [1, 2], "max_tokens": 3})))
        client.start()
        deadline = time.monotonic() + 30
        while not frontend.arrivals.due(lambda: 0.0) and time.monotonic() < deadline:
            time.sleep(0.001)  # until the submission reaches the engine's side
        frontend.arrivals.conn.close()  # as if the engine's process died
        client.join(timeout=30)
        assert answer["r"][0] == 500 and "gone" in answer["r"][1]["error"]["message"]
        assert frontend.process.wait(timeout=30) == 0
    finally:
        if frontend.process.poll() is None:
            frontend.process.kill()


def test_the_engine_finishes_its_admitted_requests_when_the_front_end_process_dies():
    """The child killed while requests run: the serving loop notices the broken pipe, admits nothing more,
    finishes what it admitted (its clients are gone with the child) and returns its outcome."""
    real_run.release_engine()
    spec = LiveSpec(QLLM(max_batch_size=4), "qllm", real_run.EngineSettings(num_slots=6), max_len=48, port=0,
                    max_batch_size=4)
    live = LiveServer.build(spec)

    def one(url: str, i: int) -> None:
        try:
            post(f"{url}/v1/completions", {"prompt": [3, 4, 5 + i], "max_tokens": 12})
        except OSError:
            pass  # the front end died under this client: its connection is reset

    def client(url: str) -> None:
        threads = [threading.Thread(target=one, args=(url, i), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while not live.arrivals.prompts and time.monotonic() < deadline:  # some request has reached the engine
            time.sleep(0.001)
        live.frontend.process.kill()

    outcome = live.run(on_ready=lambda url: threading.Thread(target=client, args=(url,), daemon=True).start())
    assert live.arrivals.child_gone and outcome.requests
    for r in outcome.requests:
        assert r.num_generated_tokens == r.num_output_tokens == 12
    assert live.server.engine.pool.num_free == 6


def test_chat_over_http_through_the_front_end_process():
    """The chat route end to end through the child process, the engine's side played by hand: the request
    that reaches the engine carries the instruct prompt, and the client gets the assistant's message."""
    from real.chat import chat_prompt_ids
    from real.frontend import FrontendProcess
    from sim.workload.tokenizer import load_tokenizer

    processor = load_tokenizer()
    frontend = FrontendProcess.launch("127.0.0.1", 0, "mixtral-8x7b", 32000, 256, "BE", 4, None)
    try:
        frontend.arrivals.start(time.perf_counter())
        answer = {}
        body = {"messages": CHATS[1], "max_tokens": 2, "priority": "LS"}
        client = threading.Thread(target=lambda: answer.update(r=post(f"{frontend.url}/v1/chat/completions", body)))
        client.start()
        deadline = time.monotonic() + 30
        requests = []
        while not requests and time.monotonic() < deadline:
            requests = frontend.arrivals.due(lambda: 0.0)
        [request] = requests
        assert frontend.arrivals.prompt_ids(request) == chat_prompt_ids(CHATS[1], processor)
        assert request.priority == Priority.LS and request.num_output_tokens == 2
        frontend.arrivals.finished(request, processor.encode("Yes")[:2])
        frontend.arrivals.flush()
        client.join(timeout=30)
        status, reply = answer["r"]
        assert status == 200 and reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["choices"][0]["message"]["content"] == processor.decode(processor.encode("Yes")[:2])
    finally:
        frontend.stop()


def test_the_pipe_defers_the_clients_tokens_while_arrivals_wait_for_a_decision():
    """PipeArrivals: a `due` that hands over a submission sends nothing (the loop decides first); the tokens
    owed go out at the next `due` with none, or when the host waits (`idle`). `is_due` sees a submission
    (and stamps when) before it is read."""
    import socket
    from multiprocessing.connection import Connection

    from real.frontend import PipeArrivals
    ours, theirs = socket.socketpair()
    child = Connection(theirs.detach())
    clock = iter(float(t) for t in range(100))
    pipe = PipeArrivals(Connection(ours.detach()), clock=lambda: next(clock))
    pipe.start(0.0)
    assert child.recv() == ("start", 0.0)
    assert not pipe.is_due(None)
    pipe.tokens(0, [5])  # not streamed: nothing owed
    assert pipe.outbox == []
    pipe.streamed.add(0)
    pipe.tokens(0, [5, 6])
    child.send(("submit", 1, 0.5, [1, 2, 3], 4, Priority.LS.value, False, 0.75))
    assert pipe.is_due(None) and pipe.is_due(None)  # seen once, stamped once
    [request] = pipe.due(None)
    assert request.request_id == 1 and request.num_prompt_tokens == 3 and pipe.prompt_ids(request) == [1, 2, 3]
    assert not child.poll(0.05)  # the tokens wait: an arrival was handed over
    way = pipe.transit[1]
    assert (way.arrival_s, way.sent_s) == (0.5, 0.75) and way.sent_s <= way.seen_s <= way.received_s
    assert pipe.due(None) == []
    assert child.recv() == ("out", [("tokens", 0, [5, 6])])  # sent with nothing to decide on
    pipe.finished(request, [7, 8])
    pipe.idle()
    assert child.recv() == ("out", [("finished", 1, [7, 8])])
    pipe.idle()
    assert not child.poll(0.05)  # nothing owed: nothing sent


def test_metrics_render_prometheus_text_with_cumulative_buckets():
    """Every series for both classes from the start; a histogram's buckets count up to +Inf; a refused body's class
    is what it asked for, else the default's."""
    from real.metrics import Metrics

    metrics = Metrics()
    empty = metrics.render()
    assert 'qllm_requests_total{priority="LS",outcome="ok"} 0' in empty and "# TYPE qllm_answer_seconds histogram" in empty
    metrics.admitted("LS")
    metrics.first("LS", 0.004)
    metrics.ended("LS", "ok", 0.3, 5)
    metrics.admitted("BE")
    metrics.ended("BE", "timeout", 700.0, 0)
    lines = dict(line.rsplit(" ", 1) for line in metrics.render().splitlines() if not line.startswith("#"))
    assert lines['qllm_time_to_first_token_seconds_bucket{priority="LS",le="0.005"}'] == "1"
    assert lines['qllm_answer_seconds_bucket{priority="LS",le="0.25"}'] == "0"
    assert lines['qllm_answer_seconds_bucket{priority="LS",le="0.5"}'] == "1"
    assert lines['qllm_answer_seconds_bucket{priority="LS",le="+Inf"}'] == "1"
    assert lines['qllm_answer_seconds_sum{priority="LS"}'] == "0.300000"
    assert lines['qllm_requests_total{priority="BE",outcome="timeout"}'] == "1"
    assert lines['qllm_answer_seconds_count{priority="BE"}'] == "0"  # only answers sent
    assert lines['qllm_generated_tokens_total{priority="LS"}'] == "5"
    assert lines['qllm_requests_in_flight{priority="LS"}'] == lines['qllm_requests_in_flight{priority="BE"}'] == "0"
    api = Api(LiveArrivals(), CODEC, "tiny", max_len=64)
    api.complete({"prompt": "text", "priority": "LS"})  # no tokenizer: 400
    api.complete({"prompt": "text", "priority": "nonsense"})  # counted under the default class
    api.complete("not an object")
    text = api.metrics.render()
    assert 'qllm_requests_total{priority="LS",outcome="refused"} 1' in text
    assert 'qllm_requests_total{priority="BE",outcome="refused"} 2' in text
