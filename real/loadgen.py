"""`python -m real.loadgen URL --trace trace.csv`: replay a trace against a running `python -m real serve`
(or any server taking the same `/v1/completions` body): each request is posted at its arrival time, with
its trace length of random prompt ids (those of a `real run` of the same seed), `max_tokens` its output
length, and its priority. Writes one row per request (client-side latency, status; with `--stream`, the
client's own time to first token) and prints a summary."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd

from real.prompts import prompt_ids
from sim.workload import WorkloadConfig, generate_trace, read_trace
from sim.workload.trace import TraceError


def model_info(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
        return json.loads(response.read())["data"][0]


def post(url: str, body: dict, timeout_s: float) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        return 0, {"error": {"message": str(error)}}


def post_stream(url: str, body: dict, timeout_s: float, clock=time.perf_counter) -> tuple[int, dict, float | None]:
    """Post with `"stream": true` and read the events: (status, the completion as one object, the clock when
    the first token came). The object has the streamed `token_ids` and text joined, and the last chunk's fields
    (`finish_reason`, `qllm`, `usage`)."""
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    ids, text, first, answer = [], [], None, {}
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            for line in response:
                if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                    continue
                chunk = json.loads(line[len(b"data: "):])
                if "error" in chunk:
                    return 500, chunk, first
                for choice in chunk.get("choices", []):
                    if choice["token_ids"] and first is None:
                        first = clock()
                    ids += choice["token_ids"]
                    text.append(choice["text"])
                    answer["finish_reason"] = choice["finish_reason"] or answer.get("finish_reason")
                answer.update({key: chunk[key] for key in ("id", "qllm", "usage") if key in chunk})
            status = response.status
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        return 0, {"error": {"message": str(error)}}, first
    answer.setdefault("usage", {"completion_tokens": len(ids)})
    return status, {**answer, "token_ids": ids, "text": "".join(text)}, first


def replay(url: str, trace: pd.DataFrame, seed: int, timeout_s: float = 600.0, stream: bool = False) -> pd.DataFrame:
    """Post every request of `trace` at its `arrival_s` (one thread each); one row per request. `stream`:
    each is streamed, and its row has `ttft_s`, from its send to its first token at the client."""
    vocab = int(model_info(url)["vocab_size"])
    rows: list[dict] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def one(r) -> None:
        body = {"prompt": prompt_ids(seed, vocab, int(r.request_id), int(r.prompt_tokens)),
                "max_tokens": int(r.output_tokens), "priority": r.priority}
        sent = time.perf_counter() - start
        first = None
        if stream:
            status, answer, first = post_stream(url, body, timeout_s)
        else:
            status, answer = post(url, body, timeout_s)
        done = time.perf_counter() - start
        usage, extra = answer.get("usage", {}), answer.get("qllm", {})
        ttft = first - start - sent if first is not None else float("nan")
        with lock:
            rows.append({"request_id": int(r.request_id), "priority": r.priority, "arrival_s": float(r.arrival_s),
                         "sent_s": sent, "done_s": done, "latency_s": done - sent, "ttft_s": ttft, "status": status,
                         "completion_tokens": usage.get("completion_tokens", 0),
                         "output_tokens": int(r.output_tokens), "server_request_id": extra.get("request_id", -1),
                         "error": answer.get("error", {}).get("message", "")})

    threads = []
    for r in trace.itertuples():
        time.sleep(max(float(r.arrival_s) - (time.perf_counter() - start), 0.0))
        thread = threading.Thread(target=one, args=(r,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return pd.DataFrame(rows).sort_values("request_id", ignore_index=True)


def summary(table: pd.DataFrame) -> str:
    ok = table[table.status == 200]
    lines = [f"{len(ok)} of {len(table)} requests answered 200; tokens as asked: "
             f"{int((ok.completion_tokens == ok.output_tokens).sum())} of {len(ok)}"]
    for priority, group in ok.groupby("priority"):
        ttft = (f"  TTFT p50 {1e3 * group.ttft_s.median():.0f} ms  p99 {1e3 * group.ttft_s.quantile(0.99):.0f} ms"
                if group.ttft_s.notna().any() else "")
        lines.append(f"  {priority}: n={len(group)}  latency p50 {1e3 * group.latency_s.median():.0f} ms  "
                     f"p99 {1e3 * group.latency_s.quantile(0.99):.0f} ms{ttft}")
    late = (table.sent_s - table.arrival_s).quantile(0.99)
    lines.append(f"  sends behind their arrival time, p99: {1e3 * late:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--trace", help="a trace file (CSV/parquet, as `real run` and `sim run` write)")
    parser.add_argument("--rate", type=float, default=2.0, help="without --trace: Poisson arrivals per second")
    parser.add_argument("--num-requests", type=int, default=50, help="without --trace: how many")
    parser.add_argument("--output-tokens", type=int, default=None, help="without --trace: a fixed output length")
    parser.add_argument("--seed", type=int, default=0, help="the trace's (without --trace) and the prompts' seed")
    parser.add_argument("--stream", action="store_true", help="stream every request (the client's TTFT)")
    parser.add_argument("--out", type=Path, default=Path("loadgen.csv"))
    args = parser.parse_args(argv)
    try:
        if args.trace:
            trace = read_trace(args.trace)
        else:
            fixed = {"output_mode": "fixed", "fixed_output_tokens": args.output_tokens} if args.output_tokens else {}
            trace = generate_trace(WorkloadConfig(rate=args.rate, num_requests=args.num_requests, **fixed), args.seed)
        table = replay(args.url.rstrip("/"), trace, args.seed, stream=args.stream)
    except (TraceError, ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    except urllib.error.URLError as error:
        sys.exit(f"error: no server at {args.url}: {error.reason}")
    table.to_csv(args.out, index=False)
    print(summary(table))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
