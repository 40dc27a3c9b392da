"""Application steps built on the estimators and the audit: export to Parquet, the whole workflow, figures."""

from .export import ExportReport, export_latents
from .workflow import WorkflowResult, run_workflow

__all__ = ["ExportReport", "WorkflowResult", "export_latents", "run_workflow"]
