"""The web page's password: a salted scrypt hash in a small file in the state directory.

Format of the file (one line): ``scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>``. The file is
written whole (temporary file + rename) with mode 0600; the password itself is never stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from ..config import Config

# scrypt cost: 16 MiB of memory and ~0.1 s on a Raspberry Pi 4 per check; logins are rare and
# rate-limited, so this is affordable, and it makes guessing from a stolen file expensive.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_LENGTH = 8
PASSWORD_FILE_NAME = "web-password"


def password_path(config: Config) -> Path:
    """[web] password_file, or "web-password" beside the product database (the state dir)."""
    if config.web.password_file:
        return Path(config.web.password_file)
    return Path(config.gallery.path).parent / PASSWORD_FILE_NAME


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    if len(password) < MIN_LENGTH:
        raise ValueError(f"the password must have at least {MIN_LENGTH} characters")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True if `password` matches the stored hash (constant-time comparison)."""
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):  # a damaged file: no password matches it
        return False
    return hmac.compare_digest(got, want)


def read_password_hash(path: Path) -> str | None:
    """The stored hash, or None when no password is set. A file that exists but cannot be read
    is an error (the service would otherwise start without the protection it was given)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the web password file {path}: {exc}") from exc
    if not text.startswith("scrypt$"):
        raise ValueError(
            f"{path} is not a web password file: set the password again with "
            "`python -m device web set-password`"
        )
    return text


def write_password(path: Path, password: str) -> None:
    """Store a new password's hash (replacing any previous one), readable by its owner only."""
    line = hash_password(password) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_local_host(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, "localhost")."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind_allowed(config: Config) -> str | None:
    """The password hash the server must require, or None for a local-only server without one.
    Raises ValueError when the server would listen beyond this machine without a password."""
    stored = read_password_hash(password_path(config))
    if stored is None and not is_local_host(config.web.host):
        raise ValueError(
            f"[web] host = {config.web.host!r} makes the web page reachable from the network, "
            f"but no web password is set: run `python -m device web set-password` (it writes "
            f'{password_path(config)}), or set [web] host = "127.0.0.1" or enabled = false'
        )
    return stored
