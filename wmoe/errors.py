"""One family of errors and one exit-code scheme for every command of the project.

Every error the project raises on purpose (a bad config, checkpoint, image, dataset or recipe; weights
that cannot be found) subclasses `WMoEError`, so a command line catches one class, prints
`error: <message>` without a traceback and exits with `EXIT_ERROR`. Anything else is a bug: Python's
traceback and exit status 1.
"""

from __future__ import annotations

EXIT_OK = 0  # everything asked for was done
EXIT_SKIPPED = 1  # done, but some inputs were skipped (each one named on stderr with its reason)
EXIT_ERROR = 2  # nothing (more) could be done: a clear error, or wrong command-line usage (argparse)
EXIT_PUBLISH_FAILED = 3  # the work is complete on disk, but publishing it (to the Hub) failed


class WMoEError(Exception):
    """Base of every error the project raises on purpose; the message says what is wrong and how to fix it."""


class ArgumentError(WMoEError, ValueError):
    """An argument a library function cannot use (a wrong shape, count or name); the message says which.
    Also a ValueError, so callers' `except ValueError` keeps working."""
