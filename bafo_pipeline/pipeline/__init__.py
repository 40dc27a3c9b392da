"""Application steps built on the estimators and the audit: export to Parquet (in this process, or on a Ray
cluster), the whole workflow, figures.

The names below are imported on first use, so that a Ray actor importing
:mod:`bafo_pipeline.pipeline.partitions` loads neither the workflow nor the estimators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .distributed import EncodeJobReport, encode_dataset
    from .export import ExportReport, export_latents
    from .workflow import WorkflowResult, run_workflow

#: Public name → the module it is imported from on first use.
_SOURCES = {
    "EncodeJobReport": ".distributed",
    "encode_dataset": ".distributed",
    "ExportReport": ".export",
    "export_latents": ".export",
    "WorkflowResult": ".workflow",
    "run_workflow": ".workflow",
}

__all__ = ["EncodeJobReport", "ExportReport", "WorkflowResult", "encode_dataset", "export_latents", "run_workflow"]


__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES, __all__)
