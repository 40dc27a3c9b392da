"""What a Parquet file's footer metadata reveals, entry by entry, for the audit report.

The footer travels with the data. bafo's own entries describe the file (sizes, the
model, the concealment) and never a row; anything else is listed as unknown, and any
string that looks like a file path or a UTKFace-style file name (which spells out age,
gender and ethnicity) is flagged wherever it sits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..io.parquet import looks_like_path

__all__ = ["describe_footer"]

_FOOTER_KEYS = {
    "ARROW:schema": "the Arrow schema: column names and types (nothing per row)",
    "pandas": "pandas' description of the columns and index (an index stored as a column is audited as a column)",
    "bafo_audit_receipt": "the receipt of an earlier audit (its verdict and fingerprints)",
}
_BAFO_KEYS = {
    "format": "the file format's name",
    "format_version": "the file format's version",
    "package_version": "the bafo-pipeline version that wrote the file",
    "latent_dim": "the embedding's size",
    "row_count": "the number of rows",
    "created_at": "when the file was written",
    "labels_included": "whether the file carries label columns",
    "label_columns": "the names of the label columns the file carries",
    "id_type": "whether ids are numbers or text",
    "split_included": "whether the file has a split column",
    "model_fingerprint": "which model encoded the rows (SHA-256 of its files)",
    "model_verified": "whether that model's files matched their manifest when it was loaded",
    "concealment": "the concealment steps the model applied",
    "attribute_schema": "the names and categories of the sensitive attributes the model knows (no values)",
    "source_fingerprint": ("a hash of the set of source images, keyed with the id key: links the file to that "
                           "exact set, not to rows, for the key's holder only"),
    "source_rows": "how many source rows there were (skipped ones included)",
    "precision": "the arithmetic of the encoder",
    "decoder": "how images were decoded",
    "decode_processes": "how many worker processes decoded the images (0: threads)",
}


def _path_like(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        return where if looks_like_path(value) else None
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _path_like(item, f"{where}[{key!r}]")
        if found:
            return found
    return None


def _entry(key: str, reveals: str, value: Any, concern: str | None = None) -> dict[str, Any]:
    found = _path_like(value, key)
    if found:
        concern = f"{found} holds a file path or file name, which can spell out the labels"
    return {"key": key, "reveals": reveals, "concern": concern}


def describe_footer(footer: Mapping[str, str]) -> list[dict[str, Any]]:
    """One entry per footer key (and per key of bafo's JSON): what it reveals, and any concern.

    Parameters
    ----------
    footer : mapping of str to str
        The footer's key-value metadata (:func:`bafo_pipeline.io.footer.read_footer_metadata`).

    Returns
    -------
    list of dict
        ``{"key", "reveals", "concern"}``; ``concern`` is None when the entry is harmless.
    """
    entries = []
    for key, text in footer.items():
        if key == "bafo":
            try:
                meta = json.loads(text)
            except ValueError:
                entries.append(_entry(key, "bafo metadata that is not valid JSON", text, "unreadable: review it"))
                continue
            if not isinstance(meta, dict):
                entries.append(_entry(key, "bafo metadata that is not a JSON object", text, "unreadable: review it"))
                continue
            for name, value in meta.items():
                concern = None
                if name == "labels_included" and value:
                    concern = "the file carries its labels: an audit file, not one to share"
                reveals = _BAFO_KEYS.get(name)
                if reveals is None:
                    reveals, concern = "an entry bafo does not write", concern or "unknown: review it before sharing"
                entries.append(_entry(f"bafo.{name}", reveals, value, concern))
            continue
        reveals = _FOOTER_KEYS.get(key)
        if reveals is None:
            entries.append(_entry(key, "an entry of another tool", text, "unknown: review it before sharing"))
        else:
            entries.append(_entry(key, reveals, text if key != "ARROW:schema" else ""))
    return entries
