"""Errors that are the user's to fix (configuration, input files, the deployment): the CLI
prints their message as one line and exits 2, never a traceback. The message says what is
wrong, where, and how to fix it. One subclass keeps several lines: an invalid rule pack
(churnguard.rules.loading.PackFileInvalid) prints every problem as FILE:LINE:COL, exit 1."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave churnguard; `str(error)` is the whole explanation."""
