"""fvagent: ID-card and live-face verification agent for the Guangxi maternal-and-child platform."""

from importlib import metadata as _metadata

try:
    # The one version source is pyproject.toml's [project] version, read back from the installed
    # distribution's metadata (the release bundle, the venv's editable install).
    __version__ = _metadata.version("fvagent")
except _metadata.PackageNotFoundError:  # a bare source tree on sys.path, never installed
    __version__ = "0+unknown"
