"""The Parquet latent format: one writer and one reader, used by the export, the CLI and the audit alike.

The reader takes a file, a folder of files (plain or hive-partitioned, as the distributed
export writes), a glob or a URI (``s3://``, ``gs://``, any fsspec scheme)."""

from .parquet import (
    LatentParquetWriter,
    LatentTable,
    dimension_columns,
    embedding_column,
    embedding_matrix,
    iter_latent_batches,
    read_embedding,
    read_latents,
    read_metadata,
    read_schema,
    read_table,
    write_latents,
)

__all__ = [
    "LatentParquetWriter",
    "LatentTable",
    "dimension_columns",
    "embedding_column",
    "embedding_matrix",
    "iter_latent_batches",
    "read_embedding",
    "read_latents",
    "read_metadata",
    "read_schema",
    "read_table",
    "write_latents",
]
