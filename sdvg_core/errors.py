"""User-facing errors. Every message names the problem and the fix.

Engine code raises these (never bare asserts) for anything a user can cause:
a wrong file, a missing folder, an impossible size, a model pair that does not match.
"""


class SDVGError(Exception):
    """A problem the user can fix; the message says what and how."""


class CheckpointError(SDVGError):
    """A weights file is unreadable, truncated, of the wrong kind, or incomplete."""


class MissingFileError(SDVGError, FileNotFoundError):
    """A file or folder the user must provide is not where it was expected."""


class IncompatibleModelsError(SDVGError):
    """Drafter and target (or another model pair) cannot work together."""


class InputError(SDVGError, ValueError):
    """An argument is out of range: a size, a tau, a prompt, a block count."""


class NumericalError(SDVGError, FloatingPointError):
    """A model produced NaN or Inf."""
