"""The terminal says when the sweep waits for a store, and for what (real sockets and HTTP)."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from sweep.stores.waiting import TrackingWatch, announce_if_slow, announce_slow_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_tracking_server_down_then_back(capsys):
    port = _free_port()
    watch = TrackingWatch(f"http://127.0.0.1:{port}")
    watch.check()  # nothing listens: down
    watch.check()  # said once, not on every poll
    err = capsys.readouterr().err
    assert err.count("waiting for the MLflow tracking server at http://127.0.0.1:") == 1, err
    server = http.server.HTTPServer(("127.0.0.1", port), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        watch.check()
    finally:
        server.shutdown()
        server.server_close()
    assert "answers again" in capsys.readouterr().err


def test_a_file_store_has_nothing_to_watch(tmp_path, capsys):
    TrackingWatch(f"sqlite:///{tmp_path}/mlflow.db").check()
    assert capsys.readouterr().err == ""


def test_a_slow_call_is_announced_and_its_end_too(capsys):
    with announce_if_slow("the Optuna storage X", after_s=0.2):
        time.sleep(0.5)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("waiting for the Optuna storage X") and "answered after" in err[1]
    with announce_if_slow("the Optuna storage X", after_s=5):
        pass
    assert capsys.readouterr().err == ""


@pytest.mark.slow  # waits on a locked store
def test_a_slow_local_store_is_said_slow_never_not_answering(tmp_path, capsys):
    """A real SQLite MLflow store kept busy by another writer's lock: the call is slow, and says so
    once it passes the watch's threshold; a short one says nothing. The server wording stays."""
    import sqlite3

    from mlflow import MlflowClient

    from sweep.stores import tracking

    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    tracking.seed_sqlite(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("busy")
    watch = TrackingWatch(uri)
    assert watch.what == f"the MLflow store {path}"

    with watch.call():  # a short wait: quiet
        client.create_run(experiment)
    assert capsys.readouterr().err == ""

    watch.local_slow_s = 0.3
    holder = sqlite3.connect(path, check_same_thread=False)
    holder.execute("begin immediate")  # as a busy writer holds it: others read, and wait to write
    release = threading.Timer(1.5, holder.rollback)
    release.start()
    try:
        with watch.call():
            client.create_run(experiment)  # waits for the lock (SQLite's busy timeout), then succeeds
    finally:
        release.join()
        holder.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"the MLflow store {path} is slow (busy disk or CPU); still waiting", err
    assert err[1].startswith(f"the MLflow store {path} caught up after ") and len(err) == 2, err
    assert "not answering" not in "\n".join(err)

    server = TrackingWatch("http://127.0.0.1:1")
    server.slow_s = 0.2
    with server.call():
        time.sleep(0.5)
    err = capsys.readouterr().err
    assert err.startswith("waiting for the MLflow tracking server at http://127.0.0.1:1: not answering"), err


def test_the_optuna_storage_is_said_slow_when_it_is_a_local_file_and_not_answering_when_a_server(tmp_path, capsys):
    for url in (f"journal:///{tmp_path}/optuna.journal", f"sqlite:///{tmp_path}/optuna.db"):
        with announce_slow_store("the Optuna storage", url, after_s=0.05):
            time.sleep(0.2)
        err = capsys.readouterr().err
        assert "the Optuna storage is slow (busy disk or CPU); still waiting" in err and "not answering" not in err
    with announce_slow_store("the Optuna storage", "postgresql://me@db/optuna", after_s=0.05):
        time.sleep(0.2)
    assert "waiting for the Optuna storage: not answering" in capsys.readouterr().err
