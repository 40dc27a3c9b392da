"""The Parquet latent format: one writer and one reader, used by the export, the CLI and the audit alike."""

from .parquet import (
    LatentParquetWriter,
    LatentTable,
    iter_latent_batches,
    read_embedding,
    read_latents,
    read_metadata,
    write_latents,
)

__all__ = [
    "LatentParquetWriter",
    "LatentTable",
    "iter_latent_batches",
    "read_embedding",
    "read_latents",
    "read_metadata",
    "write_latents",
]
