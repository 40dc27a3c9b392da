"""Application steps built on the estimators and the audit: export to Parquet (in this process, or on a Ray
cluster), the whole workflow, figures."""

from .distributed import EncodeJobReport, encode_dataset
from .export import ExportReport, export_latents
from .workflow import WorkflowResult, run_workflow

__all__ = ["EncodeJobReport", "ExportReport", "WorkflowResult", "encode_dataset", "export_latents", "run_workflow"]
