"""The integrity of a model directory: a manifest of every file's SHA-256, and the model's fingerprint.

A model directory holds ``manifest.json`` beside its files::

    {"format": "bafo-model-manifest", "version": 1, "algorithm": "sha256",
     "files": {"config.json": "<hex>", "model.safetensors": "<hex>"}}

The **fingerprint** of a model is the SHA-256 of its file list with their digests
(canonical JSON of ``files``), so it changes when any byte of any file changes,
the config included, or when a file is added or removed. Loading checks every file
against the manifest, and refuses a directory whose files differ from it, lack a
listed file or hold one it does not list.

The manifest is not a signature: whoever can write the directory can also rewrite
the manifest. What it guarantees is that the fingerprint recorded in exported
latents and audit receipts names exactly the bytes that were loaded, so a model
edited after the fact (say ``concealment`` set to ``"none"``) can never pass under
the fingerprint of the model that was fitted and audited.

Directories written before manifests existed have none: they load with a warning
that their integrity cannot be verified, and their fingerprint is computed over all
their files in the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "MANIFEST_NAME",
    "ModelIntegrityError",
    "check_against_manifest",
    "directory_digests",
    "fingerprint_of",
    "manifest_document",
    "read_manifest",
    "sha256_bytes",
    "sha256_file",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "bafo-model-manifest"
MANIFEST_VERSION = 1


class ModelIntegrityError(ValueError):
    """A model directory whose files do not match its manifest (edited, added or removed after saving)."""


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_of(files: Mapping[str, str]) -> str:
    """The model fingerprint: SHA-256 of the canonical JSON of ``{file name: hex digest}``."""
    canonical = json.dumps(dict(sorted(files.items())), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def manifest_document(files: Mapping[str, str]) -> str:
    """The text of ``manifest.json`` for these digests."""
    return json.dumps(
        {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "algorithm": "sha256",
            "files": dict(sorted(files.items())),
        },
        indent=2,
    )


def _entries(path: Path) -> list[Path]:
    """The directory's entries other than the manifest; anything but a regular file is refused."""
    entries = []
    for entry in sorted(path.iterdir()):
        if entry.name == MANIFEST_NAME:
            continue
        if entry.is_symlink() or not entry.is_file():
            kind = "a symbolic link" if entry.is_symlink() else "a folder or special file"
            raise ModelIntegrityError(
                f"{path}: {entry.name} is {kind}; a model directory holds only regular files"
            )
        entries.append(entry)
    return entries


def directory_digests(path: str | os.PathLike) -> dict[str, str]:
    """``{file name: hex SHA-256}`` of every regular file of a directory except the manifest.

    Raises
    ------
    ModelIntegrityError
        If the directory holds a symbolic link, a folder or a special file.
    """
    return {entry.name: sha256_file(entry) for entry in _entries(Path(path))}


def read_manifest(path: str | os.PathLike) -> dict[str, str] | None:
    """The ``files`` digests listed by a directory's ``manifest.json``, or None when it has none.

    Raises
    ------
    ModelIntegrityError
        If the manifest is unreadable, of an unknown format, or lists names that are not plain file names.
    """
    manifest_path = Path(path) / MANIFEST_NAME
    if not manifest_path.exists():
        return None
    try:
        document = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelIntegrityError(f"{manifest_path}: unreadable manifest ({error})") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ModelIntegrityError(f"{manifest_path}: not a bafo model manifest")
    if document.get("version") != MANIFEST_VERSION or document.get("algorithm") != "sha256":
        raise ModelIntegrityError(
            f"{manifest_path}: manifest version {document.get('version')!r} / algorithm "
            f"{document.get('algorithm')!r} is not one this bafo-pipeline checks"
        )
    files = document.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelIntegrityError(f"{manifest_path}: the manifest lists no files")
    for name, digest in files.items():
        if (
            not isinstance(name, str)
            or name in ("", ".", "..", MANIFEST_NAME)
            or "/" in name
            or "\\" in name
            or not isinstance(digest, str)
            or len(digest) != 64
        ):
            raise ModelIntegrityError(f"{manifest_path}: malformed entry {name!r}")
    return {str(k): str(v).lower() for k, v in files.items()}


def check_against_manifest(path: Path, listed: Mapping[str, str], actual: Mapping[str, str]) -> None:
    """Raise :class:`ModelIntegrityError` naming every difference between the listed and the actual digests."""
    problems = []
    for name in sorted(set(listed) - set(actual)):
        problems.append(f"{name} is missing")
    for name in sorted(set(actual) - set(listed)):
        problems.append(f"{name} is not in the manifest")
    for name in sorted(set(listed) & set(actual)):
        if listed[name] != actual[name]:
            problems.append(f"{name} was modified after the model was saved")
    if problems:
        raise ModelIntegrityError(
            f"{path}: the model directory does not match its {MANIFEST_NAME} ({'; '.join(problems)}); "
            "refusing to load a model whose files changed after saving. Restore the saved files, "
            "or re-save the model with bafo-pipeline if the change was intended"
        )
