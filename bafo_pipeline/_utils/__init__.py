"""The bottom layer: helpers every other layer may use and that import nothing of the package.

atomic writes (:mod:`.atomic`), outputs that never overwrite inputs (:mod:`.outputs`), devices
and their arithmetic (:mod:`.device`), local paths and URIs as ``pyarrow.fs`` filesystems
(:mod:`.filesystems`), progress reporting (:mod:`.progress`), JSON cleaning (:mod:`.jsonable`) and estimators' parameter
checks (:mod:`.params`, imported from there).
"""

from .atomic import AtomicFile, atomic_write_path, check_destination, remove_stale_temporaries, staging_directory
from .device import autocast, native_bfloat16, resolve_device
from .filesystems import glob_files, has_glob, is_local, is_uri, join, resolve_filesystem, within
from .jsonable import to_jsonable
from .outputs import OutputClashError, check_not_an_input
from .progress import Progress, epoch_progress

__all__ = [
    "AtomicFile",
    "OutputClashError",
    "Progress",
    "atomic_write_path",
    "autocast",
    "check_destination",
    "check_not_an_input",
    "epoch_progress",
    "glob_files",
    "has_glob",
    "is_local",
    "is_uri",
    "join",
    "native_bfloat16",
    "remove_stale_temporaries",
    "staging_directory",
    "resolve_device",
    "resolve_filesystem",
    "to_jsonable",
    "within",
]
