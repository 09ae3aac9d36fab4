"""Model runtimes: one plug-in per model format, found through entry points."""

from shipyard.options import Option
from shipyard.runtime.base import Model, Runtime

__all__ = ["Model", "Option", "Runtime"]
