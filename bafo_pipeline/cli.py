"""The ``bafo`` command line: train, encode, audit, decode, grid, and ``run`` (the whole job)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import click
import numpy as np

from ._utils import check_not_an_input
from .attributes import DEFAULT_SENSITIVE
from .data.images import ImageDecodeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
#: Skipped files listed on the terminal; the rest go to the JSON list beside the output.
SKIPS_SHOWN = 10
#: Exceptions that mean "the input or the request is wrong": shown as one line, not a traceback.
USER_ERRORS = (OSError, ValueError, KeyError)
TRANSPORT_PRESETS = ("transport", "transport-refined")  # the concealments --transport-shrinkage applies to


class _UserErrorsAsMessages(click.Group):
    """Prints a user error (bad file, existing output, unreadable image with --strict, ...) as one
    ``Error: ...`` line with exit status 1; ``bafo --debug`` shows the traceback instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except USER_ERRORS as error:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(_one_line(error)) from None


def _one_line(error: BaseException) -> str:
    """The error as one line a person can act on: what went wrong, where, and what to do."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror[:1].lower()}{error.strerror[1:]}"
    elif isinstance(error, KeyError):
        text = f"{error.args[0]!r} not found" if error.args else "a required key is missing"
    else:
        text = str(error) or type(error).__name__
    text = re.sub(r"pass overwrite=True(?: \(--overwrite\))?", "pass --overwrite", text)
    if isinstance(error, ImageDecodeError):
        text += " (--strict stops at the first unreadable image; without it such images are skipped and listed)"
    return " ".join(text.split())


def _refuse_inputs_as_output(out, *, utkface=None, manifest=None, source=None, files=(), folders=()) -> None:
    """--out may be neither an input (image, manifest) nor inside an input folder."""
    from .pipeline.export import source_files

    check_not_an_input(
        out, what="--out", folders=[f for f in (utkface, *folders) if f],
        files=[*([manifest] if manifest else []), *files, *((source_files(source) or []) if source is not None else [])],
    )


def _report_skips(scanned: list, exported: list, listing: Path) -> None:
    """Show skipped inputs by reason (the first few by name) and write all of them to ``listing``.

    ``scanned``: ``(file or manifest row, reason)`` found while scanning; ``exported``: the
    same found while decoding. The listing names source files, which may spell out labels
    (UTKFace): it is written readable by its owner only, beside the output, not in it.
    """
    if not scanned and not exported:
        return
    from ._utils import atomic_write_path

    entries = [{"item": str(item), "reason": reason} for item, reason in [*scanned, *exported]]
    for entry in entries[:SKIPS_SHOWN]:
        click.echo(f"skipped {entry['item']}: {entry['reason']}", err=True)
    by_reason = Counter(_reason_kind(entry["reason"]) for entry in entries)
    click.echo("skipped by reason: " + "; ".join(f"{n} {kind}" for kind, n in by_reason.most_common()), err=True)
    with atomic_write_path(listing, overwrite=True) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_text(json.dumps({"by_reason": dict(by_reason.most_common()), "skipped": entries}, indent=1) + "\n")
    more = f"{len(entries) - SKIPS_SHOWN} more; " if len(entries) > SKIPS_SHOWN else ""
    click.echo(f"{more}all {len(entries)} skipped inputs: {listing} (names source files: keep it private)", err=True)


def _reason_kind(reason: str) -> str:
    """A reason without its particulars (quoted values, file names and paths, numbers), to count skips by kind.

    As the distributed export counts them (:func:`~bafo_pipeline.pipeline.job_folder.public_reason`):
    ``"file not found: img/26_1_2.jpg"`` and ``"file not found: img/40_0_1.jpg"`` are one kind.
    """
    from .pipeline.job_folder import public_reason

    return re.sub(r"\d+", "N", public_reason(reason))


def _beside(out, suffix: str) -> Path:
    out = Path(out)
    return out.with_name(out.name + suffix)


_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::\d+)?")
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps."


def _check_device(ctx, param, value: str) -> str:
    """--device, checked as the command starts (before any data is read): a device the library takes
    (:func:`~bafo_pipeline._utils.device.resolve_device`) that this machine has, else a usage error."""
    if value is None or value in ("auto", "cpu"):
        return value
    if not _DEVICE.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a device; use {DEVICE_HELP}")
    import torch

    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{value!r} was asked for, but CUDA is not available here; use auto or cpu")
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise click.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                     f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif not torch.backends.mps.is_available():
        raise click.BadParameter(f"{value!r} was asked for, but MPS is not available here; use auto or cpu")
    return value


def _apply(options: list, function):
    """Decorate ``function`` with click ``options``, first option listed first in --help."""
    for option in reversed(options):
        function = option(function)
    return function


class _PathOrURI(click.Path):
    """A local path (checked as click.Path checks it), or a URI such as ``s3://bucket/faces`` (checked when read)."""

    name = "path_or_uri"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", value):
            return value
        return super().convert(value, param, ctx)


def _data_options(function):
    """Options shared by every command that reads a dataset."""
    options = [
        click.option("--utkface", type=_PathOrURI(exists=True, file_okay=False), help="A UTKFace folder (labels in file names); local or a URI."),
        click.option("--manifest", type=_PathOrURI(exists=True, dir_okay=False), help="A CSV/Parquet table: image path + attribute columns; local or a URI."),
        click.option("--image-column", default="path", show_default=True, help="Manifest column holding image paths."),
        click.option("--sensitive", default=",".join(DEFAULT_SENSITIVE), show_default=True, help="Comma-separated sensitive columns of the manifest."),
        click.option("--synthetic-samples", default=3000, show_default=True, help="Number of synthetic faces (default data)."),
        click.option("--limit", type=click.IntRange(min=1),
                     help="Use at most this many images, chosen by content hash (not by name or label)."),
        click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it."),
        click.option("--allow-outside-root", is_flag=True,
                     help="Accept files leading outside the folder or the manifest's folder (symlinks, ../ and "
                          "absolute manifest paths); skipped with a reason otherwise."),
    ]
    return _apply(options, function)


def _load(utkface, manifest, image_column, sensitive, synthetic_samples, limit, strict, image_size=56, seed=0,
          allow_outside_root=False):
    from .data.sources import load_source

    dataset = load_source(
        utkface=utkface, manifest=manifest, synthetic_samples=synthetic_samples, image_size=image_size,
        image_column=image_column, sensitive=tuple(s.strip() for s in sensitive.split(",") if s.strip()),
        limit=limit, strict=strict, seed=seed, allow_outside_root=allow_outside_root,
    )
    click.echo(f"data: {dataset.report.summary()}", err=True)
    return dataset


def _concealment_options(default: str):
    """Options that set the concealment steps (train and run), with ``default`` as --concealment's default."""
    options = [
        click.option("--concealment", type=click.Choice(["none", "linear", "full", "trained", "transport",
                                                         "transport-refined"]), default=default,
                     show_default=True,
                     help="none: the paper's latent; linear: + LEACE; full: + adversarial refiner and LEACE; "
                          "trained: LEACE learned in training; transport: each attribute group's latents moved "
                          "onto the pooled ones, which needs every row's labels when encoding too (labelled "
                          "exports only); transport-refined: + adversarial refiner and LEACE "
                          "(docs/TRAINED_CONCEALMENT.md)."),
        click.option("--covariance-dims", default=0, show_default=True,
                     help="Also erase this many directions where the groups' spreads differ "
                          "(docs/COVARIANCE_ERASURE.md)."),
        click.option("--decoder-epochs", default=6, show_default=True,
                     help="Fine-tune the decoder on the concealed latents for sharper decodes (0: keep the encoder's)."),
        click.option("--refine-kl-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
                     help="KL weight of the refiner (full, transport-refined): lower keeps more content and leaks "
                          "more (docs/TRAINED_CONCEALMENT.md §11)."),
        click.option("--transport-shrinkage", type=click.FloatRange(min=0), default=None,
                     help="Pseudo-rows pulling each attribute cell's covariance towards the pooled one (transport, "
                          "transport-refined; default the step's, 40): more pseudo-rows keep more content and leave more "
                          "of each group's spread, fewer let more estimation error through "
                          "(docs/TRAINED_CONCEALMENT.md §14-15)."),
        click.option("--noise-scale", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Add noise after the concealment, with this share of the latents' spread, the same for "
                          "every export of an image (a keyed hash of its pixels): it blurs what the strongest "
                          "attacks read, and costs every downstream model alike; on UTKFace 0.25 lowered the "
                          "neighbour attacker's gender reading by 0.005-0.02 and kept 0.89 of head yaw instead of 0.93 "
                          "(docs/TRAINED_CONCEALMENT.md §20). Not invertible: decoding goes through the fine-tuned "
                          "decoder (--decoder-epochs)."),
    ]
    return lambda function: _apply(options, function)


def _check_transport_shrinkage(concealment: str, shrinkage: float | None) -> None:
    """Refuse ``--transport-shrinkage`` for a concealment without a transport step, before any work."""
    if shrinkage is not None and concealment not in TRANSPORT_PRESETS:
        raise click.UsageError(f"--transport-shrinkage sets the transport's maps; --concealment {concealment} has none")


def _with_concealment_options(estimator, shrinkage: float | None, noise_scale: float | None):
    """``estimator`` with its transport step's covariance shrinkage set and a :class:`KeyedNoise` step appended.

    Either option spells its preset out as steps; the model then records its concealment as steps, and
    :func:`_concealment_provenance` keeps the preset's name and the options.
    """
    from .transformers import ConditionalTransport, KeyedNoise

    if shrinkage is None and noise_scale is None:
        return estimator
    steps = estimator.spell_out_concealment().concealment
    for step in steps:
        if shrinkage is not None and isinstance(step, ConditionalTransport):
            step.set_params(shrinkage=shrinkage)
    if noise_scale is not None:
        estimator.set_params(concealment=[*steps, KeyedNoise(scale=noise_scale)])
    return estimator


def _concealment_provenance(concealment: str, shrinkage: float | None, noise_scale: float | None) -> dict:
    """What the model's metadata records of the concealment options when the preset was spelled out as steps."""
    options = {"transport_shrinkage": shrinkage, "noise_scale": noise_scale}
    given = {name: value for name, value in options.items() if value is not None}
    return {"concealment_options": {"concealment": concealment, **given}} if given else {}


def _id_key_options(function):
    """Options of the pseudonymous ids' key and the key table (encode, run)."""
    options = [
        click.option("--id-key-file", type=click.Path(dir_okay=False),
                     help="The key of the pseudonymous ids (default $BAFO_ID_KEY_FILE or ~/.config/bafo/id.key, "
                          "created on first use): keep it private, reuse it to resume or to join exports by id."),
        click.option("--key-table", type=click.Path(dir_okay=False),
                     help="Also write id -> source file here (CSV/Parquet, mode 0600, apart from --out): "
                          "for the data owner only, never to share."),
    ]
    return _apply(options, function)


def _ray_options(function):
    """Options of ``bafo encode --engine ray`` (the distributed export)."""
    options = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: this process, one Parquet file; ray: a Ray cluster, a folder of Parquet partitions."),
        click.option("--workers", default=2, show_default=True, help="--engine ray: actors, each holding the model once."),
        click.option("--gpus-per-worker", type=float, help="--engine ray: GPUs per actor (default 1 where the cluster has GPUs)."),
        click.option("--partition-rows", type=int, help="--engine ray: images per output file (default ~1/64 of them, 500-100,000)."),
        click.option("--ray-address", help="--engine ray: the cluster to use (default $RAY_ADDRESS, else a local one)."),
    ]
    return _apply(options, function)


@click.group(cls=_UserErrorsAsMessages, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bafo-pipeline")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error instead of one line.")
def main(debug: bool) -> None:
    """bafo: latents that conceal gender, age and ethnicity, exported and audited.

    \b
    Typical use:
      bafo run --out runs/demo                      # the whole job on synthetic faces
      bafo train --utkface DIR --out models/bafo     # train on real faces
      bafo encode --model models/bafo --utkface DIR --out latents.parquet
      bafo audit --latents latents.parquet --out report/ --attach
      bafo verify latents.parquet --max-leakage 0.05
      bafo decode --model models/bafo face.jpg --age 40 --gender female --out decoded/
    """


# ---------------------------------------------------------------------------- train
@main.command()
@_data_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--latent-dim", default=48, show_default=True, help="Latent size (the paper compares 48 and 100).")
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--learning-rate", default=2e-3, show_default=True)
@click.option("--kl-weight", default=1.0, show_default=True, help="Weight of the KL term.")
@click.option("--variance-weight", default=1.0, show_default=True, help="Extra weight on the KL variance term.")
@click.option("--independence-weight", default=0.0, show_default=True, help="HSIC penalty pushing latents to independence from the sensitive attributes.")
@click.option("--condition-every-layer", is_flag=True, help="Feed the attributes to every decoder layer.")
@click.option("--adversary-weight", default=0.0, show_default=True, help="Adversarial pressure on the image encoder itself.")
@_concealment_options(default="full")
@click.option("--image-size", default=56, show_default=True)
@click.option("--test-fraction", default=0.15, show_default=True, help="Held out by content hash; never trained on.")
@click.option("--device", default="auto", show_default=True, callback=_check_device, help=DEVICE_HELP)
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Write a training checkpoint here after every epoch.")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
def train(utkface, manifest, image_column, sensitive, synthetic_samples, limit, strict, allow_outside_root, out_dir,
          latent_dim, epochs,
          batch_size, learning_rate, kl_weight, variance_weight, independence_weight, condition_every_layer,
          adversary_weight, concealment, covariance_dims, decoder_epochs, refine_kl_weight, transport_shrinkage,
          noise_scale, image_size, test_fraction, device, seed, checkpoint, resume, overwrite):
    """Train a BAFO model on the training split and save it.

    The split is by content hash (duplicates never straddle it), so `bafo encode
    --split test` later finds exactly the images the model never saw.
    """
    from .transformers import BAFOTransformer, save_model

    _check_transport_shrinkage(concealment, transport_shrinkage)
    if Path(out_dir).exists() and not overwrite:
        raise click.UsageError(f"{out_dir} exists; pass --overwrite to replace it")
    _refuse_inputs_as_output(out_dir, utkface=utkface, manifest=manifest)
    dataset = _load(utkface, manifest, image_column, sensitive, synthetic_samples, limit, strict, image_size, seed,
                    allow_outside_root)
    _refuse_inputs_as_output(out_dir, source=dataset)
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)  # as save_model would: the skip listing goes beside it
    _report_skips(dataset.report.skipped, [], _beside(out_dir, ".skipped.json"))
    train_set, _ = dataset.split(test_fraction=test_fraction, seed=seed)
    click.echo(f"training on {len(train_set)} images (held out: {len(dataset) - len(train_set)})", err=True)
    estimator = BAFOTransformer(
        latent_dim=latent_dim, image_shape=(image_size, image_size), epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, kl_weight=kl_weight, variance_weight=variance_weight,
        independence_weight=independence_weight, condition_every_layer=condition_every_layer,
        adversary_weight=adversary_weight, concealment=concealment, covariance_dims=covariance_dims,
        decoder_epochs=decoder_epochs, refine_kl_weight=refine_kl_weight, device=device, random_state=seed, verbose=1,
    )
    estimator = _with_concealment_options(estimator, transport_shrinkage, noise_scale)
    estimator.fit(train_set.images, sensitive_features=train_set.sensitive_features, checkpoint=checkpoint, resume=resume)
    data = {"source": "utkface" if utkface else "manifest" if manifest else "synthetic", "synthetic_samples": synthetic_samples,
            **_concealment_provenance(concealment, transport_shrinkage, noise_scale)}
    save_model(estimator, out_dir, overwrite=overwrite, metadata={"split": {"test_fraction": test_fraction, "seed": seed}, "data": data})
    last = estimator.history_[-1] if estimator.history_ else {}
    click.echo(f"saved {out_dir} (validation loss {last.get('validation_loss', float('nan')):.1f})")


# --------------------------------------------------------------------------- encode
@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@_data_options
@click.option("--out", required=True, type=click.Path(),
              help="Parquet file to write (--engine ray: a folder of Parquet partitions).")
@click.option("--split", "which", type=click.Choice(["all", "train", "test", "calibration"]), default="all",
              show_default=True,
              help="Rows to encode, by the model's own content-hash split. 'all' leaves out the calibration rows of "
                   "a `bafo run` model: its concealment was fitted on them, so they are shared only when named.")
@click.option("--include-split", is_flag=True, help="Add a 'split' column (train/test/calibration).")
@click.option("--include-labels", is_flag=True, help="Store the attribute columns too (for audit datasets only).")
@click.option("--ids", type=click.Choice(["content", "row"]), default="content", show_default=True,
              help="content: a keyed hash of each image's content (pseudonymous); row: the manifest's 1-based "
                   "data-row number. Rows are written in the order of the pseudonymous ids either way.")
@click.option("--id-column", help="A non-sensitive manifest column of your own keys to use as id instead.")
@_id_key_options
@click.option("--batch-size", default=512, show_default=True)
@click.option("--decoder", type=click.Choice(["auto", "pil", "torch"]), default="auto", show_default=True,
              help="Image decoding: Pillow on the CPU, or batched on the model's device (nvJPEG on a GPU); "
                   "auto picks torch on CUDA.")
@click.option("--overwrite", is_flag=True)
@click.option("--images", type=_PathOrURI(exists=True, file_okay=False),
              help="A folder of images without labels (searched recursively); local or a URI.")
@_ray_options
def encode(model_dir, utkface, manifest, image_column, sensitive, synthetic_samples, limit, strict, allow_outside_root,
           out, which, include_split, include_labels, ids, id_column, id_key_file, key_table, batch_size, decoder,
           overwrite, images, engine, workers, gpus_per_worker, partition_rows, ray_address):
    """Encode images to concealed latents and stream them to a Parquet file.

    By default the file holds only ids and latents: no labels, no file names
    (UTKFace names spell out age, gender and ethnicity). Unreadable images are
    skipped and listed by row (or stop the run with --strict); the file appears
    only when complete.

    With --engine ray the work runs on a Ray cluster (a local one unless
    RAY_ADDRESS or --ray-address names one) and OUT is a folder of Parquet
    partitions with a _bafo_job.json written last; running the same command
    again resumes an interrupted job.
    """
    if engine == "ray":
        return _encode_on_ray(
            model_dir, out, utkface=utkface, manifest=manifest, images=images, image_column=image_column,
            sensitive=sensitive, limit=limit, strict=strict, allow_outside_root=allow_outside_root, which=which,
            include_split=include_split, include_labels=include_labels, id_column=id_column, batch_size=batch_size,
            decoder=decoder, overwrite=overwrite, workers=workers, gpus_per_worker=gpus_per_worker,
            partition_rows=partition_rows, ids=ids, id_key_file=id_key_file, key_table=key_table,
            ray_address=ray_address,
        )
    ray_only = [f"--{n}" for n, v in (("ray-address", ray_address), ("partition-rows", partition_rows)) if v]
    if ray_only:
        raise click.UsageError(f"{', '.join(ray_only)}: only with --engine ray")
    if Path(out).is_dir():
        raise click.UsageError(f"{out} is a folder; the local engine writes one Parquet file (--engine ray writes folders)")
    from tqdm.auto import tqdm

    from .data.splits import hash_roles, rows_of_split
    from .pipeline.export import export_latents
    from .transformers import load_verified_model

    if Path(out).exists() and not overwrite:
        raise click.UsageError(f"{out} exists; pass --overwrite to replace it")
    if ids == "row" and manifest is None:
        raise click.UsageError("--ids row numbers a manifest's rows; pass --manifest (or use --ids content)")
    if ids == "row" and id_column is not None:
        raise click.UsageError("--ids row and --id-column both name the ids; choose one")
    for output in (out, key_table):
        if output is not None:
            _refuse_inputs_as_output(output, utkface=utkface, manifest=manifest, folders=[model_dir, images])
    loaded = load_verified_model(model_dir)
    estimator, metadata = loaded.estimator, loaded.metadata
    split_info = metadata.get("split")
    if (which != "all" or include_split) and split_info is None:
        raise click.UsageError("this model records no train/test split; use --split all without --include-split")
    source = _scan(utkface, manifest, images, image_column, sensitive, metadata, estimator, synthetic_samples, limit,
                   strict, allow_outside_root)
    for output in (out, key_table):
        if output is not None:
            _refuse_inputs_as_output(output, source=source)
    scan_skipped = list(source.report.skipped)
    names = None
    if split_info is not None:
        names = hash_roles(source.content_hash, **split_info)
        keep = rows_of_split(names, which)
        if which == "all" and not keep.all():
            click.echo(f"left out the {int((~keep).sum())} calibration images the model's concealment was fitted "
                       "on (shared, they let anyone holding most of their labels read the rest; --split "
                       "calibration encodes them)", err=True)
        source, names = source.subset(keep), names[keep]
    with tqdm(total=len(source), desc="encoding", unit="img") as bar:
        report = export_latents(
            estimator, source, out, include_labels=include_labels, split=names if include_split else None,
            id_column=id_column, id_from=ids, id_key=id_key_file, key_table=key_table,
            metadata=loaded.provenance(), batch_size=batch_size, strict=strict,
            overwrite=overwrite, decoder=decoder, progress=bar.update,
        )
    _report_skips(scan_skipped, _named_rows(source, report.skipped), _beside(out, ".skipped.json"))
    click.echo(f"wrote {report.n_written} latents to {out} ({len(report.skipped)} skipped)")
    if key_table is not None:
        click.echo(f"key table (id -> file, keep it private): {key_table}", err=True)


def _named_rows(source, skipped: list) -> list:
    """The export's ``(position, reason)`` skips as ``(file or manifest row, reason)``: what the owner knows them by."""
    from .pipeline.export import source_files

    files = source_files(source)
    rows = source.attributes.index
    named = []
    for position, reason in skipped:
        where = f"row {rows[position]}" if rows.name == "row" else None
        if files is not None:
            where = f"{files[position]}" + (f" ({where})" if where else "")
        named.append((where or f"image {position + 1}", reason))
    return named


def _encode_on_ray(model_dir, out, *, utkface, manifest, images, image_column, sensitive, limit, strict,
                   allow_outside_root, which, include_split, include_labels, id_column, batch_size, decoder, overwrite,
                   workers, gpus_per_worker, partition_rows, ids, id_key_file, key_table, ray_address):
    """``bafo encode --engine ray``: scan here (hashing on the cluster), encode on the cluster, one file per partition."""
    from tqdm.auto import tqdm

    from .pipeline.distributed import PartitionFailed, encode_dataset

    if limit is not None:
        raise click.UsageError("--limit is not supported with --engine ray")
    if id_column is not None:
        raise click.UsageError("--id-column is not supported with --engine ray; use --ids row for manifest row numbers")
    if sum(s is not None for s in (utkface, manifest, images)) != 1:
        raise click.UsageError("--engine ray reads files: pass exactly one of --utkface, --manifest or --images")
    _refuse_inputs_as_output(out, utkface=utkface, manifest=manifest, folders=[model_dir, images])
    bar = tqdm(desc="encoding", unit="img")
    try:
        report = encode_dataset(
            model_dir, out, utkface=utkface, manifest=manifest, images=images, image_column=image_column,
            sensitive=tuple(c.strip() for c in sensitive.split(",") if c.strip()), include_labels=include_labels,
            id_from=ids, id_key=id_key_file, key_table=key_table, split=which, include_split=include_split,
            workers=workers, gpus_per_worker=gpus_per_worker, partition_rows=partition_rows, batch_size=batch_size,
            decoder=decoder, strict=strict, overwrite=overwrite, allow_outside_root=allow_outside_root,
            address=ray_address, progress=bar.update,
        )
    except (FileExistsError, FileNotFoundError, NotADirectoryError, PartitionFailed, ValueError) as error:
        raise click.ClickException(str(error)) from None
    finally:
        bar.close()
    for where, reason in report.scan_skipped[:10]:
        click.echo(f"skipped {where}: {reason}", err=True)
    counts = report.counts
    for reason, count in list(counts["skipped_by_reason"].items())[:10]:
        click.echo(f"skipped {count}: {reason}", err=True)
    kept = f", {report.partitions_kept} kept from an earlier run" if report.partitions_kept else ""
    click.echo(f"wrote {counts['written']} latents to {out} ({report.n_partitions} partitions{kept}; "
               f"{counts['skipped']} skipped, {counts['duplicates_dropped'] + counts['conflicting_files_dropped']} "
               f"duplicates dropped; job file {out}/_bafo_job.json)")
    if key_table is not None:
        click.echo(f"key table (id -> file, keep it private): {key_table}", err=True)


def _scan(utkface, manifest, images, image_column, sensitive, metadata, estimator, synthetic_samples, limit, strict,
          allow_outside_root):
    """Files are only scanned (decoded later, in streaming batches); synthetic faces are drawn as the model's were."""
    from .data.sources import scan_source

    data = metadata.get("data", {})
    if data.get("source") == "synthetic":
        synthetic_samples = data.get("synthetic_samples", synthetic_samples)
    source, report = scan_source(
        utkface=utkface, manifest=manifest, images=images, synthetic_samples=synthetic_samples,
        image_size=estimator.input_format_.shape[0], image_column=image_column,
        sensitive=tuple(s.strip() for s in sensitive.split(",") if s.strip()), limit=limit, strict=strict,
        seed=metadata.get("split", {}).get("seed", 0), allow_outside_root=allow_outside_root,
    )
    click.echo(f"data: {report.summary()}", err=True)
    return source


# ---------------------------------------------------------------------------- audit
@main.command()
@click.option("--latents", "latents", multiple=True, required=True,
              help="Embeddings: a Parquet file, a folder of them (plain or hive-partitioned), a glob or a URI "
                   "(repeat to compare several side by side).")
@click.option("--labels",
              help="CSV or Parquet labels (file, folder, glob or URI) joined by id; default: the labels stored "
                   "in the first latents dataset.")
@click.option("--fit-latents", "fit_latents", multiple=True,
              help="A labelled training export for the data-rich attacker (one per --latents, in order; a file, "
                   "folder, glob or URI): probes are fitted on it and scored on the audited data. Labels come "
                   "from --labels, joined by id, or from the training export itself.")
@click.option("--id-column", default="id", show_default=True)
@click.option("--latent-column", help="The embedding's list column in files of other tools (default: 'latent', "
                                      "else the only list column, else one numeric column per dimension).")
@click.option("--sample", type=int, help="Audit a stratified sample of this many rows (for datasets larger than "
                                         "memory); the report says so.")
@click.option("--attributes", default=",".join(DEFAULT_SENSITIVE), show_default=True, help="Sensitive attributes to audit.")
@click.option("--target", help="A non-sensitive column for the downstream fairness report (e.g. smile).")
@click.option("--folds", default=5, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--max-leakage", type=float, help="Fail when any attribute's worst-case leakage exceeds this.")
@click.option("--gate", help="Apply --max-leakage to this representation only (a file stem); default: all.")
@click.option("--overwrite", is_flag=True, help="Replace the report files of an earlier audit in --out.")
@click.option("--attach", is_flag=True,
              help="Write the verdict into each latents file's footer (an audit receipt, for bafo verify); "
                   "the rows are not touched. Single Parquet files only.")
@click.option("--targets", help="Non-sensitive label columns to audit for utility (e.g. yaw,mouth_open,smile): what "
                                "each representation keeps of them, with the same probes and intervals.")
@click.option("--references", help="Representations (file stems) the utility shares are relative to, farthest "
                                   "first (e.g. pixels,encoder); the last one judges the overall verdict.")
@click.option("--residual", is_flag=True,
              help="Also audit the part of each continuous target the sensitive attributes do not explain.")
@click.option("--min-share", default=0.8, show_default=True,
              help="Overall verdict: share of the reference's utility every target must keep.")
def audit(latents, labels, fit_latents, id_column, latent_column, sample, attributes, target, folds, out_dir,
          max_leakage, gate, overwrite, attach, targets, references, residual, min_share):
    """Measure how much of each sensitive attribute the embeddings still reveal.

    Probes (majority baseline, logistic/ridge, MLP, gradient boosting) are
    cross-validated on the given data; with --fit-latents they are also fitted
    on a labelled training export and scored on the audited rows (the
    data-rich attacker), and the training export's own rows are attacked by
    the group-sum attack (the in-sample attacker: a concealment fitted on those
    rows fixed their class means); the verdict takes the strongest. The
    headline is the best probe's chance-adjusted score (0 = chance, 1 =
    perfect). Each file's ids, row order and other columns are audited as side
    channels, and its footer metadata is listed. Audit data the encoder never
    trained on (bafo encode --split test --include-labels).

    With --targets, what each representation keeps of non-sensitive label
    columns (utility) is measured with the same probes and intervals, as shares
    of the --references, and an overall verdict (leakage and utility) is
    printed per representation; utility does not change the exit status.

    \b
    Exit status:
      0  done: no side channel leaks, and --max-leakage (if given) holds
      1  failed: a side channel leaks, or some worst-case leakage exceeds --max-leakage
    """
    from .audits import run_audit_files

    inputs = [*latents, *fit_latents, *([labels] if labels else [])]
    check_not_an_input(out_dir, what="--out", files=[i for i in inputs if not Path(i).is_dir()],
                       folders=[i for i in inputs if Path(i).is_dir()])
    names = [s.strip() for s in attributes.split(",") if s.strip()]
    report = _with_progress(
        "auditing",
        lambda progress: run_audit_files(
            list(latents), labels, out_dir, id_column=id_column, latent_column=latent_column, sample=sample,
            attributes=names, target=target, n_folds=folds, progress=progress, overwrite=overwrite,
            fit_latents=list(fit_latents) or None, attach=attach, max_leakage=max_leakage,
            targets=_names_list(targets), references=_names_list(references), residual=residual, gate=gate,
            min_share=min_share,
        ),
    )
    if sample is not None:
        click.echo(report.leakage.warnings[0], err=True)
    _print_verdicts(report)
    click.echo(f"report: {Path(out_dir) / 'report.html'}")
    if attach:
        click.echo(f"receipt attached to {', '.join(latents)}")
    if report.failed(max_leakage, gate):
        if report.leakage.side_channels_leak(threshold=max_leakage, representation=gate):
            click.echo("FAILED: a side channel (ids, row order or another column) reveals a sensitive attribute",
                       err=True)
        if max_leakage is not None and report.exceeds(max_leakage, gate):
            click.echo(f"FAILED: worst-case leakage exceeds {max_leakage}", err=True)
        sys.exit(1)


def _names_list(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


@contextlib.contextmanager
def _progress_bar(description: str):
    """A progress callback for the audit's (done, total, text) calls whose tqdm bar appears at the first call
    (in `bafo run` the audit comes after the training, which shows its own)."""
    from tqdm.auto import tqdm

    bar = None

    def progress(done, total, text=""):
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=description, unit="probe")
        bar.total, bar.n = total, done
        bar.set_postfix_str(str(text)[:40])
        bar.refresh()

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


def _with_progress(description: str, work):
    """Run ``work(progress)`` with a tqdm bar fed by the audit's (done, total, text) callbacks."""
    with _progress_bar(description) as progress:
        return work(progress)


def _print_verdicts(report) -> None:
    from .pipeline.workflow import verdict_table

    utility = {f.representation: f for f in report.fairness}
    table = verdict_table(report)
    both = table["data_rich"].notna().any()
    for name, rows in table.groupby("representation", sort=False):
        click.echo(f"\n{name}")
        for row in rows.itertuples():
            in_sample = "" if np.isnan(row.in_sample) else f", in-sample {row.in_sample:.3f}"
            attackers = (f" [cross-validated {row.cross_validated:.3f}, data-rich {row.data_rich:.3f}{in_sample}]"
                         if both else "")
            click.echo(f"  {row.attribute:<12} {row.leakage:6.3f} ({row.probe}){attackers}: {row.verdict}")
        if name in utility:
            click.echo("  " + _downstream_line(utility[name]))
    sides = report.leakage.side_channels()
    if len(sides):
        click.echo("\nside channels (ids, row order, other columns):")
        for (of, channel), rows in sides.groupby(["of", "channel"], sort=False):
            leaking = rows[rows["leaks"]]
            if leaking.empty:
                click.echo(f"  {of} · {channel}: no significant link to "
                           f"{', '.join(rows['attribute'])} (largest {rows['leakage'].max():.3f})")
            for row in leaking.itertuples():
                click.echo(f"  LEAKS {row.verdict}")
    if report.utility is not None:
        _print_utility(report.utility)
    if report.verdicts:
        click.echo("\noverall:")
        for line in report.verdicts:
            click.echo(f"  {line.text}")


def _downstream_line(fairness) -> str:
    """The fairness report's downstream model in one line, saying so when it learned nothing."""
    overall = fairness.overall
    low, high = overall.get("balanced_accuracy_ci") or (float("nan"), float("nan"))
    text = (f"downstream model for {fairness.target}: balanced accuracy "
            f"{overall.get('balanced_accuracy', float('nan')):.2f} [{low:.2f}, {high:.2f}]")
    if overall.get("at_chance"):
        return text + " -- at chance: it learned nothing, so its fairness gaps mean nothing"
    return text


def _print_utility(utility) -> None:
    """Per representation and target: the best probe's chance-adjusted score and the shares of the references."""
    table = utility.shares("best")
    refs = utility.references
    shares = f"; share of {' | '.join(refs)}" if refs else ""
    click.echo(f"\nutility kept (non-sensitive targets; best probe, chance-adjusted [95% CI]{shares}):")
    for name, rows in table.groupby("representation", sort=False):
        click.echo(f"  {name}")
        for r in rows.to_dict("records"):
            parts = [f"{r['score']:6.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] ({r['probe']})"]
            if r["at_chance"]:
                parts.append("at chance")
            kept = [f"{r[f'share_of[{ref}]']:.2f}" for ref in refs if ref != name]
            if kept:
                parts.append("share " + " | ".join(kept))
            click.echo(f"    {r['target']:<22} " + "  ".join(parts))


# --------------------------------------------------------------------------- verify
@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--max-leakage", type=float,
              help="Largest tolerated worst-case leakage of any attribute (default: the gate the audit recorded).")
@click.option("--bound", type=click.Choice(["estimate", "upper"]), default="estimate", show_default=True,
              help="Compare --max-leakage with each worst case's estimate, or with its interval's upper end.")
def verify(path, max_leakage, bound):
    """Check the audit receipt of a latents file before using it.

    \b
    Exit status:
      0  the receipt is present, fresh and passing
      1  failing: some attribute's worst-case leakage exceeds --max-leakage
         (or the audit's own gate failed), or a side channel leaks
      2  the file cannot be read, or the options are wrong
      3  missing: the file carries no receipt (run bafo audit --attach)
      4  stale: the rows (or the model the file names) changed since the audit
    """
    from .audits.receipt import check_receipt

    try:
        check = check_receipt(path, max_leakage, bound=bound)
    except (FileNotFoundError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    receipt = check.receipt or {}
    if receipt:
        click.echo(
            f"receipt of {receipt.get('created_at')}: {receipt.get('audited_rows')} rows audited by "
            f"{', '.join(receipt.get('attackers', []))} probes ({', '.join(receipt.get('probes', []))})"
        )
        for row in receipt.get("worst_case", []):
            click.echo(
                f"  {row['attribute']:<12} {row['leakage']:6.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
                f"({row['probe']}, {row['attacker']})"
            )
    for reason in check.reasons:
        click.echo(f"  {reason}", err=True)
    click.echo({"ok": "OK", "failing": "FAILED", "missing": "NO RECEIPT", "stale": "STALE"}[check.status])
    sys.exit(check.exit_code)


# ------------------------------------------------------------------------------ run
@main.command()
@_data_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for model, latents and report.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--latent-dim", default=48, show_default=True)
@_concealment_options(default="transport")
@click.option("--target", help="Non-sensitive attribute for the fairness report (default: smile on synthetic faces).")
@click.option("--landmarks-cache", type=click.Path(dir_okay=False),
              help="Real faces: Parquet cache of the landmark targets (reused across runs, keyed by image content).")
@click.option("--device", default="auto", show_default=True, callback=_check_device, help=DEVICE_HELP)
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the contents of --out.")
@click.option("--calibration-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.7,
              show_default=True,
              help="Share of the training split the concealment is fitted on and that is NOT shared, so that no "
                   "shared row was moved by statistics fitted on it (0: fit on the whole training split and share "
                   "it; the audit's in-sample attacker then reads it).")
@_id_key_options
def run(utkface, manifest, image_column, sensitive, synthetic_samples, limit, strict, allow_outside_root, out_dir, epochs,
        batch_size, latent_dim, concealment, covariance_dims, decoder_epochs, refine_kl_weight, transport_shrinkage,
        noise_scale, target, landmarks_cache, device, seed, overwrite, calibration_fraction, id_key_file, key_table):
    """The whole job: train, export concealed latents, audit them, print a verdict.

    Its data are labelled, so its concealment defaults to transport, which moves
    each image's latent by the map of its own attribute cell: on the demo and on
    UTKFace it leaked no more than full and kept far more
    (docs/TRAINED_CONCEALMENT.md §11). The model it writes then needs each image's labels to encode it
    (bafo encode reads them from UTKFace names or a manifest; bafo decode and
    bafo grid redraw from its encoder's own latents): for a label-free model,
    pass --concealment full.

    Writes OUT/model/, OUT/latents.parquet (ids + latents of every image but the
    calibration ones: what you would hand on), OUT/audit_latents.parquet and
    OUT/audit_train_latents.parquet (held-out and shared training rows with labels, for
    auditing only) and OUT/report/ (report.html, report.json). The held-out split is
    audited by probes cross-validated on it and by probes fitted on the shared training
    rows (the data-rich attacker), and the shared training rows by the group-sum attack
    (the in-sample attacker: a concealment fitted on the rows it exports gives them away
    to anyone holding most of their labels; --calibration-fraction keeps the rows it is
    fitted on out of the shared file); the shared file's ids, row order and split column
    are audited as side channels, and the command exits with status 1 if one leaks.

    Utility is audited beside the leakage: what each representation keeps of
    non-sensitive targets (synthetic faces: the generator's smile, background,
    tilt, hair style and glasses; real faces: head pose, mouth and eye measures
    from facial landmarks, with the landmarks extra installed).
    """
    from .transformers import BAFOTransformer
    from .pipeline.workflow import run_workflow

    _check_transport_shrinkage(concealment, transport_shrinkage)
    outputs = [o for o in (out_dir, key_table) if o is not None]
    for output in outputs:
        _refuse_inputs_as_output(output, utkface=utkface, manifest=manifest)
    dataset = _load(utkface, manifest, image_column, sensitive, synthetic_samples, limit, strict, 56, seed,
                    allow_outside_root)
    for output in outputs:
        _refuse_inputs_as_output(output, source=dataset)
    synthetic = utkface is None and manifest is None
    if target is None and synthetic:
        target = "smile"
    estimator = BAFOTransformer(latent_dim=latent_dim, epochs=epochs, batch_size=batch_size, concealment=concealment,
                                covariance_dims=covariance_dims, decoder_epochs=decoder_epochs,
                                refine_kl_weight=refine_kl_weight, device=device, random_state=seed, verbose=1)
    estimator = _with_concealment_options(estimator, transport_shrinkage, noise_scale)
    data_info = {"source": "utkface" if utkface else "manifest" if manifest else "synthetic",
                 "synthetic_samples": synthetic_samples,
                 **_concealment_provenance(concealment, transport_shrinkage, noise_scale)}
    utility_targets = None if synthetic else _landmark_targets(landmarks_cache)
    try:
        with _progress_bar("auditing") as audit_progress:
            result = run_workflow(dataset, out_dir, estimator, seed=seed, target=target, data_info=data_info,
                                  overwrite=overwrite, progress=lambda text: click.echo(text, err=True),
                                  id_key=id_key_file, key_table=key_table, calibration_fraction=calibration_fraction,
                                  utility_targets=utility_targets, residual=utility_targets is not None,
                                  audit_options={"progress": audit_progress})
    except FileExistsError as error:
        raise click.UsageError(_one_line(error)) from None
    _report_skips(dataset.report.skipped, [], _beside(out_dir, ".skipped.json"))
    if key_table is not None:
        click.echo(f"key table (id -> file, keep it private): {key_table}", err=True)
    _print_verdicts(result.report)
    click.echo(f"\nshared latents: {result.latents_path}\nreport: {result.report_dir / 'report.html'}")
    if result.n_calibration:
        click.echo(f"not shared: the {result.n_calibration} calibration images the concealment was fitted on")
    cells = result.rows_per_cell_summary()
    if cells is not None:
        click.echo(f"rows per attribute cell the concealment was fitted on: fewest {cells['fewest']}, "
                   f"median {cells['median']:g} (its maps' estimation noise, which the audit reads, "
                   "shrinks as they grow: a larger --calibration-fraction, or more images; on UTKFace it levelled "
                   "off from about 200 per cell, docs/TRAINED_CONCEALMENT.md §14)")
    if result.report.leakage.side_channels_leak():
        click.echo("FAILED: the shared file's ids, row order or columns reveal a sensitive attribute", err=True)
        sys.exit(1)


def _landmark_targets(cache):
    """Real faces: the landmark targets of a split (a callable for run_workflow), or None without the extra."""
    from .data.landmarks import require_landmark_model, split_landmark_targets

    try:
        require_landmark_model()
    except ImportError as error:
        click.echo(f"utility not audited: real faces have no non-sensitive labels, and {error}", err=True)
        return None

    def say_unreadable(count):
        click.echo(f"landmarks: {count} held-out images unreadable, left out of the utility audit", err=True)

    return split_landmark_targets(cache, verbose=True, on_unreadable=say_unreadable)


# --------------------------------------------------------------------- decode, grid
def _parse_attribute_values(schema, given: dict[str, str | None]) -> dict:
    """CLI strings → values the schema accepts; attributes left out are not set (the model decodes them at
    their neutral value)."""
    unknown = sorted(name for name, raw in given.items() if raw is not None and name not in schema.names)
    if unknown:
        raise click.BadParameter(f"unknown attribute(s) {unknown}; this model is conditioned on {schema.names}")
    values = {}
    for attribute in schema.attributes:
        raw = given.get(attribute.name)
        if raw is None:
            continue
        if attribute.kind == "continuous":
            values[attribute.name] = _number(raw, f"--{attribute.name}")
        elif attribute.kind == "categorical" and ":" in raw:
            parts = [part.split(":") for part in raw.split(",")]
            if any(len(part) != 2 for part in parts):
                raise click.BadParameter(f"{raw!r}: expected a mixture like 'asian:0.5,white:0.5'",
                                         param_hint=f"--{attribute.name}")
            values[attribute.name] = {k.strip(): _number(w, f"--{attribute.name}") for k, w in parts}
        else:
            values[attribute.name] = _category_or_fraction(attribute, raw)
    return values


def _number(raw: str, option: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise click.BadParameter(f"{raw!r} is not a number", param_hint=option) from None
    if not np.isfinite(value):
        raise click.BadParameter(f"{raw!r} is not a finite number", param_hint=option)
    return value


def _category_or_fraction(attribute, raw: str):
    for category in attribute.categories:
        if str(category) == raw:
            return category
    try:
        return float(raw)
    except ValueError:
        raise click.BadParameter(f"{attribute.name}: {raw!r} is not one of {list(attribute.categories)}") from None


def _list_images(inputs: tuple[str, ...]) -> list[Path]:
    """Image files of the given files and folders, in the order given (sorted within folders)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            paths.append(path)
    if not paths:
        raise click.UsageError("no images found in the given inputs")
    return paths


def _concealment_name(estimator) -> str:
    """A preset's name, or the steps' class names."""
    if isinstance(estimator.concealment, str):
        return estimator.concealment
    return " -> ".join(type(step).__name__ for step in estimator.concealment)


def _say_how_label_conditional_models_redraw(estimator) -> None:
    """decode and grid are not given the input faces' own attributes, which a label-conditional concealment
    (transport) needs to encode them: such a model redraws faces from its encoder's own latents."""
    if estimator.needs_sensitive_features_to_transform:
        click.echo(
            f"this model's concealment ({_concealment_name(estimator)}) needs each face's own attributes to encode it; "
            "redrawing from the encoder's latents (for transport, what its exact inverse gives back)",
            err=True,
        )


def _decode_inputs(estimator, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Decode the input images at the model's size: ``(images, positions of the readable inputs)``.

    Each unreadable input is named by its number (its place in the listing, which its
    output takes too) and path: nothing is renumbered silently.
    """
    from .data.images import decode_images

    height, width = estimator.input_format_.shape[:2]
    images, kept, errors = decode_images([str(p) for p in paths], size=(height, width))
    failed = np.setdiff1d(np.arange(len(paths)), kept)
    for position, (_, reason) in zip(failed, errors):
        click.echo(f"skipped input {position} ({paths[position]}): {reason}", err=True)
    if not len(kept):
        raise click.ClickException("none of the inputs could be read")
    return images, np.asarray(kept)


_DECODED_NAME = re.compile(r"decoded_\d{4,}\.png")


def _prepare_decode_folder(out: Path, inputs: tuple[str, ...], paths: list[Path], overwrite: bool) -> None:
    """An empty (or new) folder, or with --overwrite one holding only earlier decodes (replaced by
    :func:`_write_decodes` once the new set is complete)."""
    check_not_an_input(out, what="--out", files=paths, folders=[i for i in inputs if Path(i).is_dir()])
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} is a file; decode writes a folder of PNGs")
    used = sorted(out.iterdir()) if out.is_dir() else []
    if not used:
        return
    if not overwrite:
        raise click.UsageError(
            f"--out {out} already holds {len(used)} files; choose an empty folder, or pass --overwrite to "
            "replace earlier decodes"
        )
    foreign = [p.name for p in used if not _DECODED_NAME.fullmatch(p.name)]
    if foreign:
        raise click.UsageError(
            f"--out {out} holds files that are not decodes ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
            "refusing to clean it: choose an empty folder"
        )


def _write_decodes(out: Path, images: dict[str, np.ndarray], check) -> None:
    """Write ``images`` (name -> HxWx3 uint8) as the folder ``out``, all or nothing.

    They are written into a hidden staging folder beside ``out`` and swapped in only once all are
    written (an earlier folder is renamed aside, the new one renamed in, the earlier one removed):
    a failure on the way leaves ``out`` as it was. ``check()`` re-validates ``out`` just before
    the swap (it may have changed while decoding). A symlinked ``out`` keeps its link.
    """
    import shutil
    import stat

    from PIL import Image

    from ._utils import staging_directory

    target = Path(os.path.realpath(out))
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging_directory(target) as staging:
        for name, image in images.items():
            Image.fromarray(image).save(staging / name, format="PNG")
        check()
        if target.exists():
            os.chmod(staging, stat.S_IMODE(target.stat().st_mode))
            replaced = target.with_name(f".{target.name}.old")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(target, replaced)
            os.replace(staging, target)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            umask = os.umask(0o022)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)  # as mkdir would have made it (the staging folder is private)
            os.replace(staging, target)


def _attribute_options(function):
    for name, text in (
        ("ethnicity", "Ethnicity category, or a mixture like 'asian:0.5,white:0.5'."),
        ("gender", "Gender category (e.g. female), or a fraction in [0, 1] (0.5 = neutral)."),
        ("age", "Age in years."),
    ):
        function = click.option(f"--{name}", help=text)(function)
    return click.option("--set", "extra", multiple=True, metavar="NAME=VALUE", help="Any other attribute of the model.")(function)


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@_attribute_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for decoded PNGs.")
@click.option("--overwrite", is_flag=True,
              help="Replace a folder of earlier decodes (once the new set is complete; a failure leaves it as it was).")
def decode(model_dir, inputs, age, gender, ethnicity, extra, out_dir, overwrite):
    """Re-draw faces with chosen attributes, e.g. --age 40 --gender female.

    INPUTS are image files or folders. Attributes left out are decoded as
    neutral (mean age, gender 0.5, an even mix of ethnicities). Input number
    i (in the order given, sorted within folders) becomes decoded_<i>.png,
    e.g. decoded_0000.png; an unreadable input is named on the terminal and
    leaves its number unused. Input names are not reused, since names like
    UTKFace's spell out labels. --out must be empty or new (or, with
    --overwrite, hold only earlier decodes). A model whose concealment needs
    each face's own attributes (transport, bafo run's default) redraws faces
    from the encoder's own latents, which its exact inverse gives back.
    """
    from .pipeline.figures import redraw_latents
    from .transformers import load_model

    estimator = load_model(model_dir)
    if estimator.schema_ is None:
        raise click.UsageError("this model was trained without sensitive attributes; there is nothing to set")
    _say_how_label_conditional_models_redraw(estimator)
    given = {"age": age, "gender": gender, "ethnicity": ethnicity}
    malformed = [item for item in extra if "=" not in item]
    if malformed:
        raise click.BadParameter(f"{malformed[0]!r}: expected NAME=VALUE", param_hint="--set")
    given.update(dict(item.split("=", 1) for item in extra))
    values = _parse_attribute_values(estimator.schema_, given)
    paths = _list_images(inputs)
    out = Path(out_dir)
    _prepare_decode_folder(out, inputs, paths, overwrite)
    images, positions = _decode_inputs(estimator, paths)
    latents, conceal = redraw_latents(estimator, images)
    decoded = estimator.inverse_transform(latents, sensitive_features=values, conceal=conceal)
    width = max(4, len(str(len(paths) - 1)))
    named = {f"decoded_{position:0{width}d}.png": image for position, image in zip(positions, _as_uint8_nhwc(decoded))}
    _write_decodes(out, named, check=lambda: _prepare_decode_folder(out, inputs, paths, overwrite))
    click.echo(f"wrote {len(decoded)} images to {out}")


def _as_uint8_nhwc(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        images = np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)
    return images


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--style", type=click.Choice(["ages", "attributes"]), default="ages", show_default=True,
              help="ages: each input across --ages x both genders; attributes: inputs vs decodes as each gender at --age.")
@click.option("--ages", default="1,20,40,60,80", show_default=True)
@click.option("--age", "fixed_age", default=40.0, show_default=True, help="Age for --style attributes.")
@click.option("--max-inputs", default=7, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def grid(model_dir, inputs, style, ages, fixed_age, max_inputs, out, overwrite):
    """The paper's figures: a face across ages and genders, or inputs vs. their decodes."""
    from ._utils import check_destination
    from .pipeline.figures import age_gender_grid, attribute_rows_grid, save_grid_png
    from .transformers import load_model

    paths = _list_images(inputs)[:max_inputs]
    check_not_an_input(out, what="--out", files=paths, folders=[i for i in inputs if Path(i).is_dir()])
    check_destination(out, overwrite=overwrite)
    estimator = load_model(model_dir)
    _say_how_label_conditional_models_redraw(estimator)
    images, _ = _decode_inputs(estimator, paths)
    if style == "ages":
        panel = age_gender_grid(estimator, images, [_number(a, "--ages") for a in ages.split(",")])
    else:
        panel = attribute_rows_grid(estimator, images, age=fixed_age)
    save_grid_png(panel, out, overwrite=overwrite)
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="bafo")
