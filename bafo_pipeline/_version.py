"""The installed package version, for provenance in saved models and exports."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """Version of the installed ``bafo-pipeline`` distribution, or ``"unknown"``."""
    try:
        return version("bafo-pipeline")
    except PackageNotFoundError:
        return "unknown"
