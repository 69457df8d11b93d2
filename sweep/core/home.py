"""A writable HOME for the libraries that keep files under it, when the user's is not.

Ray writes its token to ``~/.ray/auth_token`` when it starts a local cluster (and fails with
"FileNotFoundError: '/proc/.ray'" under ``HOME=/proc``), matplotlib its cache under
``~/.config``, MLflow and torch theirs under ``~/.cache``. None of them is the sweep's data, so
when HOME cannot be written the command goes on with HOME pointed at a fresh temporary folder
(this process and the Ray processes it starts inherit it), removed when the process ends, and
says so in one line. A token already in the user's ``~/.ray`` is still the one used to join a
cluster (``RAY_AUTH_TOKEN_PATH``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

TOKEN = Path(".ray") / "auth_token"  # Ray's default token file, under HOME
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"  # Ray's setting for another token file


def writable(folder: Path) -> bool:
    """Whether a folder can be made in ``folder`` (what Ray does first). Tried, not asked of
    ``os.access``, which answers yes for root on a folder no one can write (``/proc``)."""
    try:
        probe = tempfile.mkdtemp(prefix=".sweep-probe-", dir=folder)
    except OSError:
        return False
    os.rmdir(probe)
    return True


def ensure_writable() -> str | None:
    """Point HOME at a temporary folder when the user's cannot be written; returns the line that
    says so (None: HOME is fine, nothing changed)."""
    home = Path(os.path.expanduser("~"))
    if writable(home):
        return None
    stand_in = tempfile.mkdtemp(prefix="sweep-home-")
    atexit.register(shutil.rmtree, stand_in, ignore_errors=True)
    token = home / TOKEN
    if TOKEN_PATH_ENV not in os.environ and os.access(token, os.R_OK):
        os.environ[TOKEN_PATH_ENV] = str(token)
    os.environ["HOME"] = stand_in
    return (
        f"HOME ({home}) cannot be written; Ray, MLflow and matplotlib keep their files in {stand_in} "
        "for this command (removed at its end)"
    )
