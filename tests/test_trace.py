"""The trace file format: round trips, and bad files rejected with a message naming the problem."""

from __future__ import annotations

import pandas as pd
import pytest

from policies import Priority
from sim.workload import TraceError, WorkloadConfig, generate_trace, read_trace, to_requests, write_trace

HEADER = "request_id,arrival_s,prompt_tokens,output_tokens,priority\n"
GOOD = HEADER + "0,0.0,10,5,LS\n1,0.5,20,3,BE\n2,0.75,7,9,BE\n"

BAD_CSV = [
    ("missing column", GOOD.replace(",priority", ""), r"missing column\(s\) priority"),
    ("two missing columns", "request_id,arrival_s,priority\n0,0.0,LS\n",
     r"missing column\(s\) prompt_tokens, output_tokens"),
    ("negative arrival", GOOD.replace("1,0.5", "1,-0.5"), "column arrival_s, row 1: negative arrival time"),
    ("infinite arrival", GOOD.replace("1,0.5", "1,inf"),
     "column arrival_s, row 1: arrival time is not finite"),
    ("zero output tokens", GOOD.replace("20,3", "20,0"),
     "column output_tokens, row 1: output_tokens must be >= 1"),
    ("zero prompt tokens", GOOD.replace("7,9", "0,9"),
     "column prompt_tokens, row 2: prompt_tokens must be >= 1"),
    ("NaN", GOOD.replace("20,3", "NaN,3"), "column prompt_tokens, row 1: missing value"),
    ("empty cell", GOOD.replace("0.75", ""), "column arrival_s, row 2: missing value"),
    ("not a number", GOOD.replace("20,3", "x,3"), "column prompt_tokens, row 1: not a number"),
    ("fractional tokens", GOOD.replace("20,3", "20,3.5"), "column output_tokens, row 1: not an integer"),
    ("unknown priority", GOOD.replace(",LS", ",HI"), "column priority, row 0: priority must be LS or BE"),
    ("duplicate id", GOOD.replace("2,0.75", "1,0.75"), "column request_id, row 2: duplicate request_id"),
    ("truncated CSV", GOOD[:-5], "column output_tokens, row 2: missing value .*truncated"),
    ("truncated in a quote", GOOD + '3,1.0,5,5,"B', "cannot parse"),
    ("empty file", "", "cannot parse"),
]


@pytest.mark.parametrize("name,text,message", BAD_CSV, ids=[b[0] for b in BAD_CSV])
def test_bad_csv_traces_are_rejected_with_a_message(tmp_path, name, text, message):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        read_trace(path)


def test_good_csv_is_normalised(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(HEADER + "7,2.0,10,5, ls \n3,1.0,20,3,be\n")
    trace = read_trace(path)
    assert trace.request_id.tolist() == [3, 7] and trace.priority.tolist() == ["BE", "LS"]


def test_bad_files_are_rejected(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.csv")
    garbled = tmp_path / "t.parquet"
    garbled.write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(TraceError, match="cannot parse"):
        read_trace(garbled)
    with pytest.raises(TraceError, match="unknown suffix"):
        read_trace(garbled.rename(tmp_path / "t.json"))


def test_truncated_parquet_is_rejected(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(generate_trace(WorkloadConfig(rate=2.0, num_requests=100), 4), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(TraceError, match="cannot parse"):
        read_trace(path)


def test_write_validates_first(tmp_path):
    bad = pd.DataFrame({"request_id": [0], "arrival_s": [0.0], "prompt_tokens": [5], "output_tokens": [0],
                        "priority": ["LS"]})
    with pytest.raises(TraceError, match="output_tokens must be >= 1"):
        write_trace(bad, tmp_path / "t.csv")
    with pytest.raises(TraceError, match="missing column"):
        write_trace(bad.drop(columns="priority"), tmp_path / "t.csv")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_is_exact(tmp_path, suffix):
    trace = generate_trace(WorkloadConfig(rate=2.0, num_requests=500, burstiness=0.3), 4)
    write_trace(trace, tmp_path / f"t{suffix}")
    pd.testing.assert_frame_equal(read_trace(tmp_path / f"t{suffix}"), trace, check_exact=True)


def test_to_requests():
    trace = generate_trace(WorkloadConfig(rate=2.0, num_requests=50), 1)
    requests = to_requests(trace)
    assert [r.request_id for r in requests] == trace.request_id.tolist()
    first = requests[0]
    assert (first.arrival_s, first.num_prompt_tokens, first.num_output_tokens) == (
        trace.arrival_s[0], trace.prompt_tokens[0], trace.output_tokens[0])
    assert [r.priority for r in requests] == [Priority.parse(p) for p in trace.priority]
    assert {r.priority for r in requests} == {Priority.LS, Priority.BE} and first.num_generated_tokens == 0


def test_a_trace_file_stands_for_the_rate_of_the_run_that_wrote_it(tmp_path):
    """sim.workload.trace_rate: the rate in the summary.json beside the trace, else its arrivals per second, else
    None; replayed_workload takes it unless the command set `rate=`."""
    from sim.workload import replayed_workload, trace_rate
    trace = tmp_path / "trace.csv"
    trace.write_text(GOOD)  # three arrivals over 0.75 s
    assert trace_rate(trace) == pytest.approx(2 / 0.75)
    (tmp_path / "summary.json").write_text('{"run": {"policy": "qllm", "rate": 18, "seed": 13}}')
    assert trace_rate(trace) == 18.0
    (tmp_path / "summary.json").write_text("{not json")
    assert trace_rate(trace) == pytest.approx(2 / 0.75)
    assert trace_rate(tmp_path / "missing.csv") is None
    base = WorkloadConfig(rate=2.0)
    assert replayed_workload(base, str(trace), ["policy=fcfs"]).rate == pytest.approx(2 / 0.75)
    for given in (["rate=5"], ["+rate=5"]):
        assert replayed_workload(base, str(trace), given) is base
    assert replayed_workload(base, None, []) is base
    assert replayed_workload(base, str(tmp_path / "missing.csv"), []) is base  # the replay reports the file
