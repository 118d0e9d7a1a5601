"""The compact step log reads back exactly what was written."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from real.steplog import write_steps


def test_step_log_round_trips_exactly_and_compressed(tmp_path):
    rng = np.random.default_rng(0)
    steps = [{"batch_id": i // 4, "kind": "decode" if i % 3 else "prefill", "whole": bool(i % 2),
              "begin_s": float(t), "end_s": float(t + 1e-3)} for i, t in enumerate(np.cumsum(rng.random(500)))]
    path = tmp_path / "steps.parquet"
    write_steps(steps, path)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, pd.DataFrame(steps), check_exact=True)
    column = pq.ParquetFile(path).metadata.row_group(0).column(3)
    assert column.compression == "ZSTD" and "BYTE_STREAM_SPLIT" in column.encodings


def test_an_empty_step_log_is_written(tmp_path):
    write_steps([], tmp_path / "steps.parquet")
    assert len(pd.read_parquet(tmp_path / "steps.parquet")) == 0
