"""Slicer glue shared by the NMAI modules: MRML nodes <-> engine volumes, output nodes, engine calls.

One concept per file:

* :mod:`.mrml`     volume node <-> :class:`nmai.Volume` (exact geometry, units, SUV factors); never edits a node
* :mod:`.outputs`  NEW output nodes: name, subject hierarchy, PET display, units codes, provenance
* :mod:`.task`     one engine request: export inputs, run ``nmai <task>`` (in-process or child process),
                   load outputs, always delete the temporary folder
* :mod:`.runner`   the child-process runner with cancel (used by :mod:`.task`)
* :mod:`.parameters` module parameter nodes without the Slicer application
* :mod:`.messages` user-facing messages and the translation function ``_``
* :mod:`.gui`      progress bar / Cancel button / timer for module panels (imports qt: Slicer only)

Everything here except :mod:`.gui` imports neither qt nor ctk, so the Logic classes built on it run under
plain pytest with ``slicer-core``. Importing this package is cheap: submodules are imported on use.
"""

import os
import sys


def engine_path() -> str:
    """The folder that holds the ``nmai`` engine package (shipped inside the extension)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_engine_importable() -> str:
    """Put the engine folder on ``sys.path`` if ``nmai`` is not importable yet; return the folder."""
    path = engine_path()
    if os.path.isdir(os.path.join(path, "nmai")) and path not in sys.path:
        sys.path.append(path)
    return path


ensure_engine_importable()
