"""Messages shown to users, and the translation function.

``_`` is Slicer's ``slicer.i18n.tr`` inside the application (strings go through Slicer's translation
system) and the identity function elsewhere (pytest with slicer-core, the console), so Logic code can mark
every user-visible string the same way in both worlds.
"""

from __future__ import annotations

import logging

try:  # Slicer application
    from slicer.i18n import tr as _  # noqa: F401
except ImportError:  # slicer-core / plain Python: no translation catalogue
    def _(text: str) -> str:
        return text

from nmai.errors import CancelledError, NMAIError

CANCELLED = "Cancelled. Nothing was created."


def user_message(exc: BaseException) -> str:
    """One message a physician can act on, for any exception raised by a task.

    NMAIError messages are written for users already (they name the problem and the fix). Anything else
    is a bug: the message says so and the traceback goes to the log, not into the dialog.
    """
    if isinstance(exc, CancelledError):
        return _(CANCELLED)
    if isinstance(exc, NMAIError):
        return str(exc)
    logging.getLogger("NMAI").error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return _("Unexpected error: {error}. Details are in the application log; please report it.").format(
        error=f"{type(exc).__name__}: {exc}")
