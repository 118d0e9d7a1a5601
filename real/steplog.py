"""The step log (`steps.parquet`) written compactly, so committed runs stay small enough to keep in git and to
carry to the GPU machine: zstd with byte-stream-split times halves snappy's size, losslessly."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write_steps(steps: list[dict] | pd.DataFrame, path: Path) -> None:
    """Write a step log; float columns (the times) byte-stream-split, the rest dictionary-encoded."""
    table = pa.Table.from_pandas(pd.DataFrame(steps), preserve_index=False)
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    others = [f.name for f in table.schema if f.name not in floats]
    pq.write_table(table, path, compression="zstd", compression_level=19,
                   use_byte_stream_split=floats or False, use_dictionary=others or False)
