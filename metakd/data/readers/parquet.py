"""``.parquet`` files: one column per feature, label or ignored column; streamed by batches.

They are read with pyarrow, the ``parquet`` extra (``pip install "metakd[parquet]"``): without
it, reading one is a one-line error naming that command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from metakd.data.readers.base import FrameFormat, chunk_rows
from metakd.data.readers.columns import check_unique
from metakd.data.readers.options import ReadOptions
from metakd.data.readers.registry import register_format
from metakd.errors import DataError, first_line
from metakd.extras import require


@register_format(".parquet")
class Parquet(FrameFormat):
    """A parquet file (through pyarrow); column names are taken as text."""

    def frame(self, path: Path, where: str, options: ReadOptions) -> pd.DataFrame:
        """The whole file."""
        require("pyarrow", f"reading {where} (parquet)")
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(where, f"cannot read parquet file ({first_line(err)})") from None
        columns = [str(c) for c in frame.columns]
        check_unique(columns, where)
        frame.columns = columns
        return frame

    def frames(
        self, path: Path, where: str, options: ReadOptions, rows: int | None
    ) -> Iterator[pd.DataFrame]:
        """The file in record batches of at most ``rows`` rows."""
        # Imported here: pyarrow takes a while to import and is needed only for parquet files.
        require("pyarrow", f"reading {where} (parquet)")
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
            columns = [str(c) for c in parquet.schema_arrow.names]
            check_unique(columns, where)
            rows = rows or chunk_rows(len(columns))
            for batch in parquet.iter_batches(batch_size=rows):
                frame = batch.to_pandas()
                frame.columns = columns
                yield frame
        except DataError:
            raise
        except Exception as err:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(where, f"cannot read parquet file ({first_line(err)})") from None
