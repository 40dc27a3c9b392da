"""Leakage audit: how much of each sensitive attribute can be recovered from an embedding.

Works on any embedding (bafo latents, raw pixels, another method's output) given as
arrays or Parquet files, and depends on nothing in the model code. See docs/AUDIT.md
for the protocol.

Main entry points
-----------------
audit_leakage
    Cross-validated probe ladder -> :class:`AuditResult` (tidy table, worst case, gate).
fairness_report
    Fairness (fairlearn) of a downstream model trained on the embedding.
run_audit, run_audit_files
    Everything at once, writing ``report.json``, ``report.html`` and plots.
"""

from ._warnings import AuditWarning
from .fairness import FairnessResult, fairness_report
from .inputs import align_by_id, infer_kind
from .leakage import audit_leakage
from .mlp import TorchMLPProbe
from .probes import PROBES, make_probe
from .readers import read_embedding_parquet, read_labels
from .report import write_report
from .result import SCHEMA_VERSION, AuditResult
from .run import AuditReport, run_audit, run_audit_files

__all__ = [
    "PROBES",
    "SCHEMA_VERSION",
    "AuditReport",
    "AuditResult",
    "AuditWarning",
    "FairnessResult",
    "TorchMLPProbe",
    "align_by_id",
    "audit_leakage",
    "fairness_report",
    "infer_kind",
    "make_probe",
    "read_embedding_parquet",
    "read_labels",
    "run_audit",
    "run_audit_files",
    "write_report",
]
