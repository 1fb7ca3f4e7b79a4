"""The local stack's own Ray authentication token.

Ray 2.60 refuses to start a head with `RAY_AUTH_MODE=token` unless a token already exists
(`RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`), and a
driver needs the same token to connect. Rather than depend on whatever is in the user's
home, `livelens up` keeps the stack's token under its data dir, hands its path to the head
and to every driver, and `down` removes it if `up` made it. Auth stays on: the head
advertises addresses other processes can reach.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# Ray's own names, read by its C++ token loader in the head, the raylet's workers and drivers.
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def token_path(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "ray" / "auth_token"


def ensure_token(data_dir: Path) -> tuple[Path, bool]:
    """The stack's token file, created (0600, 256 random bits, as Ray's own generator) if missing.

    Returns the path and whether this call created it: only a token `up` created is `down`'s to remove.
    """
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        # O_EXCL + mode at creation: the token is never readable by others, not even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if not path.read_text().strip():
            raise RuntimeError(f"the Ray auth token file {path} is empty; remove it and run `livelens up` again")
        return path, False
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return path, True


def token_env(path: Path) -> dict[str, str]:
    """Environment a Ray process needs to use this token (an inline RAY_AUTH_TOKEN would win over the file)."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env.update({AUTH_MODE_ENV: "token", TOKEN_PATH_ENV: str(path)})
    return env


def use_token(path: str | Path) -> None:
    """Make this process a driver of the cluster that `path`'s token opens. Before its first `ray.init`:
    Ray's token loader caches what it read first."""
    os.environ.update({AUTH_MODE_ENV: "token", TOKEN_PATH_ENV: str(path)})
    os.environ.pop(TOKEN_ENV, None)
