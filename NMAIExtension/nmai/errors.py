"""User-facing errors.

Every problem a user can cause (bad file, wrong modality, missing tags, NaNs, ...) is raised as
:class:`NMAIError` with a one-line message that names the problem and the fix. The CLI prints it
without a traceback and exits non-zero; the Slicer Logic shows it in a message box.
"""


class NMAIError(Exception):
    """A problem with the user's input or environment, with a message a physician can act on."""


class CancelledError(NMAIError):
    """The user cancelled the operation; nothing was written."""
