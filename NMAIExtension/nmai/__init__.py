"""NMAI engine: numpy / torch / MONAI / SimpleITK / pydicom. Never imports slicer or qt.

Heavy libraries (torch, MONAI) are imported inside the functions that need them, so that importing
``nmai`` (and the Slicer modules that use it) stays fast.
"""

__version__ = "0.1.0"

from .errors import CancelledError, NMAIError  # noqa: E402,F401
from .volume import Volume  # noqa: E402,F401
