"""The terminal says when the sweep waits for a store, and for what (real sockets and HTTP)."""
from __future__ import annotations

import http.server
import socket
import threading
import time

from sweep.stores.waiting import TrackingWatch, announce_if_slow


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
