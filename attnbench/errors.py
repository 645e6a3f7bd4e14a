"""Errors that map to exit codes (DESIGN.md: 2 = usage or suite error)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad command line, suite file or user file: exit code 2, one clear line."""


class SuiteError(UsageError):
    """A suite file is malformed; the message names the file, the key and what is allowed."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path = path
        self.key = key
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")
