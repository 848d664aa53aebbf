"""Files holding secrets or tenants' data (keys, usage, audit, tokens, the pepper): 0600 files
in 0700 directories, whatever the process umask.

Modes are given to `open(2)`/`mkdir(2)` and then set with `chmod`, because a
umask can only remove bits and an operator's umask is not ours to trust either
way. A file of ours that already exists with group or other access is
tightened to 0600, with a warning naming the file (never its contents). An
existing directory is the operator's choice (say, a shared volume's mount
point) and is left alone: the files in it are private either way.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger("gateway.files")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_directory(path: Path) -> None:
    """Create PATH (0700) if it is missing; an existing directory is left as it is."""
    try:
        path.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        return
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)  # parents are not ours to restrict
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    path.chmod(PRIVATE_DIR)


def tighten(path: Path) -> None:
    """Make an existing file 0600 if group or others may access it; a missing one is fine."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        path.chmod(mode & PRIVATE_FILE)
        logger.warning(
            "%s was accessible to other users (mode %o); made it %o",
            path,
            mode,
            mode & PRIVATE_FILE,
        )


def create_private(path: Path) -> None:
    """Make sure PATH exists as a file only its owner can read (created empty if missing)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        tighten(path)
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write TEXT to a new file PATH, 0600 from its first byte; FileExistsError if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(fd, PRIVATE_FILE)
        file.write(text)
