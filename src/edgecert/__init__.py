"""edgecert: keeps an IoT Edge device's X.509 certificates renewed through Azure Key Vault."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgecert")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = ["__version__"]
