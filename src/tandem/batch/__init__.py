"""Batch inference: files of rows in, a file of predictions out, chunk by chunk, resumable."""

from tandem.batch.job import (
    DEFAULT_CHUNK_ROWS,
    BatchOptions,
    BatchProgress,
    BatchResult,
    run_batch,
)

__all__ = ["DEFAULT_CHUNK_ROWS", "BatchOptions", "BatchProgress", "BatchResult", "run_batch"]
