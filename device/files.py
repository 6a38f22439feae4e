"""Writing files and folders whole: a staging name beside the target, then one rename.

Shared by the device (gallery export files, model.json) and the desktop tools (config.json) (`training fit`'s run folder,
`convert`'s bundle): a crash or Ctrl-C leaves the old target as it was, never half of a new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def give_usual_mode(path: Path) -> None:
    """mkstemp/mkdtemp create private entries (0600/0700): give `path` the mode a plain create
    would have under this process's umask."""
    umask = os.umask(0)  # read it (there is no getter) ...
    os.umask(umask)  # ... and put it back
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A fresh temporary file beside `target` to write; when the block ends without an exception
    it gets the usual mode and is renamed over `target` (readers never see half a file),
    otherwise it is deleted. The temporary name is new each time, so it is never a file of the
    user's that happens to be there. OSError when the folder cannot be written."""
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        give_usual_mode(tmp)
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `target` whole or not at all (see `atomic_path`)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


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
