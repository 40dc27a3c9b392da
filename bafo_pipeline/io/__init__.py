"""Parquet export/import of latent datasets, and model save/load."""

from ._atomic import atomic_write_path
from .parquet import (
    LatentParquetWriter,
    LatentTable,
    iter_latent_batches,
    read_latents,
    read_metadata,
    write_latents,
)

__all__ = [
    "LatentParquetWriter",
    "LatentTable",
    "atomic_write_path",
    "iter_latent_batches",
    "read_latents",
    "read_metadata",
    "write_latents",
]
