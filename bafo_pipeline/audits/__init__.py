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
    Everything at once, writing ``report.json``, ``report.html`` and plots; the files'
    side channels (ids, row order, other columns) and footer metadata included.
check_receipt
    What ``bafo verify`` checks: a file's audit receipt is present, fresh and passing.
"""

from ._warnings import AuditWarning
from .fairness import FairnessResult, fairness_report
from .inputs import align_by_id, infer_kind
from .leakage import audit_leakage
from .mlp import TorchMLPProbe
from .probes import PROBES, UTILITY_PROBES, make_probe
from .readers import read_embedding_parquet, read_labels
from .receipt import ReceiptCheck, check_receipt, read_receipt
from .report import write_report
from .result import SCHEMA_VERSION, AuditResult
from .run import AuditReport, run_audit, run_audit_files
from .side_channels import SideChannels, audit_side_channels, side_channels_of_table

__all__ = [
    "PROBES",
    "UTILITY_PROBES",
    "SCHEMA_VERSION",
    "AuditReport",
    "AuditResult",
    "AuditWarning",
    "FairnessResult",
    "ReceiptCheck",
    "SideChannels",
    "TorchMLPProbe",
    "align_by_id",
    "audit_leakage",
    "audit_side_channels",
    "check_receipt",
    "fairness_report",
    "infer_kind",
    "make_probe",
    "read_embedding_parquet",
    "read_labels",
    "read_receipt",
    "run_audit",
    "run_audit_files",
    "side_channels_of_table",
    "write_report",
]
