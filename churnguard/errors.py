"""Errors that are the user's to fix (configuration, input files, the deployment): the CLI
prints their message as one line and exits 2, never a traceback. The message says what is
wrong, where, and how to fix it."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave churnguard; `str(error)` is the whole explanation."""
