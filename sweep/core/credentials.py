"""Credentials of the stores: the one module that knows where a secret sits in a store URL, and
keeps it out of everything the sweep writes or prints.

A store URL splits into its public part and its secret. The secret of a database URL
(``postgresql://USER:PASSWORD@HOST/DB``) is the password: the user stays, as another user may see
another store. The secret of an http(s) tracking URI is the whole ``USER:PASSWORD@`` (MLflow's
basic auth), since the server is the same whoever logs in. The public part is what ``sweep.yaml``
saves, what ``sweep resume`` compares (a changed password still resumes) and what messages show;
the secret lives only in the driver's memory and in the tasks it ships to workers.

Credentials may also come from the environment instead of the URL: libpq (psycopg) reads
``PGPASSWORD``, MLflow's client ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (or
``MLFLOW_TRACKING_TOKEN``). ``redact`` masks their values as well as any password written in a URL,
in any text (an exception's message, a traceback).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urlsplit

MASK = "***"
# What the store clients read from the environment; shipped to workers with each task.
ENV_CREDENTIALS = ("PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_ENV_SECRETS = ("PGPASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# scheme://USERINFO@ anywhere in a text (a URL's userinfo cannot hold '/', '@' or spaces unescaped)
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s/@'\"]+)@")


def is_server(url: str) -> bool:
    """An http(s) URL: a tracking server, not a database or file (the one place that decides)."""
    return url.lower().startswith(("http://", "https://"))


def split(url: str) -> tuple[str, str | None]:
    """``(public part, secret)``; the secret is None when the URL holds none."""
    netloc = urlsplit(url).netloc
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return url, None
    if is_server(url):
        public_netloc, secret = host, userinfo
    else:
        user, colon, password = userinfo.partition(":")
        if not colon:
            return url, None
        public_netloc, secret = f"{user}@{host}", password
    return url.replace(netloc, public_netloc, 1), secret or None


def public(url: str | None) -> str | None:
    """The URL without its secret: as saved, compared on resume, and shown."""
    return None if url is None else split(url)[0]


def _mask(match: re.Match) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if is_server(scheme):
        return f"{scheme}{MASK}@"
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{user}:{MASK}@" if colon else match.group(0)


def redacted(url: str | None) -> str | None:
    """The URL with ``***`` in place of its secret (says that one is set, unlike ``public``)."""
    return None if url is None else _USERINFO.sub(_mask, url)


def secrets(urls: tuple[str | None, ...] = ()) -> set[str]:
    """The secrets of ``urls`` and of the environment, as written and as decoded."""
    found = {split(url)[1] for url in urls if url} | {os.environ.get(name) for name in _ENV_SECRETS}
    found.discard(None)
    found.discard("")
    return found | {unquote(secret) for secret in found}


def redact(text: str, *urls: str | None) -> str:
    """``text`` with every password in a URL, and every known secret (of ``urls`` and of the
    environment), masked."""
    text = _USERINFO.sub(_mask, text)
    for secret in sorted(secrets(urls), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def from_environment() -> dict[str, str]:
    """The store credentials in this process's environment (the driver's), to ship to workers."""
    return {name: os.environ[name] for name in ENV_CREDENTIALS if os.environ.get(name)}


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in this process's environment while the block runs, then restore it.

    How a worker gets the driver's environment credentials: they arrive inside the task (in
    memory), not through Ray's ``runtime_env`` ``env_vars``, which the GCS keeps and the dashboard
    shows. A Ray worker process runs one task at a time, so the change is seen by that task only."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
