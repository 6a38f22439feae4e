"""Writing files and folders whole: a staging name beside the target, then one rename.

Shared by the device (gallery export files) and the desktop tools (`training fit`'s run folder,
`convert`'s bundle): a crash or Ctrl-C leaves the old target as it was, never half of a new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def give_usual_mode(path: Path) -> None:
    """mkstemp/mkdtemp create private entries (0600/0700): give `path` the mode a plain create
    would have under this process's umask."""
    umask = os.umask(0)  # read it (there is no getter) ...
    os.umask(umask)  # ... and put it back
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def staging_dir(target: Path) -> Path:
    """A new hidden folder beside `target` (same file system, so `replace_dir` is a rename),
    with the usual mode. OSError when the folder beside it cannot be written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    give_usual_mode(staging)
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Put `staging` at `target`; an old `target` is deleted only once the new one is in place
    (and put back if the rename fails)."""
    old = target.with_name(f".{target.name}.old-{int(time.time())}") if target.exists() else None
    if old is not None:
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
