"""The attackers an audit tells apart (its tables' ``attacker`` column; see :func:`~.leakage.audit_leakage`)."""

__all__ = ["CROSS_VALIDATED", "DATA_RICH", "IN_SAMPLE"]

#: Probes cross-validated on the audited rows alone.
CROSS_VALIDATED = "cross-validated"
#: Probes fitted on a labelled training export and scored on the audited rows.
DATA_RICH = "data-rich"
#: The group-sum attack on the training export's own rows.
IN_SAMPLE = "in-sample"
