"""Data: loaders (UTKFace folder, CSV/Parquet manifest, image folder; local or URIs), safe file reading,
image decoding, content-hash splits, pseudonymous ids, synthetic faces, and the :class:`FaceSource`
protocol every batch consumer reads sources through."""

from .dataset import FaceDataset, FaceSource, ImageBatch, LoadReport
from .files import StoredFile, read_file_bytes
from .folders import scan_image_folder
from .ids import key_fingerprint, load_id_key, pseudonymous_ids, write_key_table
from .images import ImageDecodeError, decode_image, decode_images, iter_decoded_batches
from .manifest import load_manifest, scan_manifest
from .sources import load_source, scan_source
from .splits import SPLIT_CHOICES, hash_roles, hash_split, rows_of_split
from .tables import ImageFiles
from .synthetic import SYNTHETIC_NON_SENSITIVE, SYNTHETIC_SENSITIVE, make_synthetic_faces
from .utkface import load_utkface, parse_utkface_name, scan_utkface

__all__ = [
    "SPLIT_CHOICES",
    "FaceDataset",
    "FaceSource",
    "ImageBatch",
    "ImageFiles",
    "ImageDecodeError",
    "LoadReport",
    "StoredFile",
    "SYNTHETIC_NON_SENSITIVE",
    "SYNTHETIC_SENSITIVE",
    "decode_image",
    "decode_images",
    "hash_roles",
    "hash_split",
    "iter_decoded_batches",
    "key_fingerprint",
    "load_id_key",
    "load_manifest",
    "load_source",
    "scan_source",
    "load_utkface",
    "make_synthetic_faces",
    "parse_utkface_name",
    "pseudonymous_ids",
    "read_file_bytes",
    "rows_of_split",
    "scan_image_folder",
    "scan_manifest",
    "scan_utkface",
    "write_key_table",
]
