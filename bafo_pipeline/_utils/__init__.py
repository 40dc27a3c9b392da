"""The bottom layer: helpers every other layer may use and that import nothing of the package.

atomic writes (:mod:`.atomic`), devices and their arithmetic (:mod:`.device`),
progress reporting (:mod:`.progress`) and JSON cleaning (:mod:`.jsonable`).
"""

from .atomic import AtomicFile, atomic_write_path, check_destination
from .device import autocast, native_bfloat16, resolve_device
from .jsonable import to_jsonable
from .progress import Progress, epoch_progress

__all__ = [
    "AtomicFile",
    "Progress",
    "atomic_write_path",
    "autocast",
    "check_destination",
    "epoch_progress",
    "native_bfloat16",
    "resolve_device",
    "to_jsonable",
]
