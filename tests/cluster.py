"""A real multi-node Ray cluster on one machine, for the ``cluster`` tests.

The root network namespace is the head host; each worker host is a network namespace joined to it
by a veth pair (``ip netns``, ``ip link``), so Ray sees separate machines with their own addresses,
and a node can be lost for real: every process in its namespace killed, or its link cut. The
stores listen where both hosts reach them: PostgreSQL (127.0.0.1 only) through a small forwarder on
the head's address, and a real ``mlflow server`` bound to that address.

The cluster runs without Ray's token authentication (``RAY_AUTH_MODE=disabled``): its addresses are
private links on this machine, and no token then has to be made, passed around or written. Ray's
node failure detection is shortened through its system config (``RAY_health_check_*``
variables, read by the GCS) so a lost node is declared dead in seconds instead of ~30 s.
Every namespace, link, process and database made here is removed in ``close()``, test failed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import services

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RAY = str(Path(PYTHON).with_name("ray"))
SUBNET = "10.213.{}"  # 10.213.<index>.0/24: one /24 per worker host, head side .1, worker side .2
# A node is declared dead after 3 missed checks 1 s apart (Ray's defaults: 3 x 3 s, plus timeouts).
# gRPC keepalive pings (every 1 s, 1 s to answer) also end calls into a host whose link is cut; without
# them a driver's call pushing a task to that host waits on TCP for minutes, and so does the task's retry.
HEALTH_CHECK = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_grpc_client_keepalive_time_ms": "1000",
    "RAY_grpc_client_keepalive_timeout_ms": "1000",
}
START_TIMEOUT_S = 120


def sh(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(what: str, check, timeout_s: float = START_TIMEOUT_S, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s:g} s")
        time.sleep(every_s)


@dataclass
class WorkerHost:
    """A network namespace with one end of a veth pair; the other end stays in the head host."""

    namespace: str
    head_link: str
    address: str  # this host's address
    head_address: str  # the head host's address on this link

    @classmethod
    def create(cls, index: int) -> WorkerHost:
        tag = f"{os.getpid() % 100000}x{index}"
        net = SUBNET.format(index)
        host = cls(f"sweep-w{tag}", f"swh{tag}", f"{net}.2", f"{net}.1")
        inner = f"sww{tag}"
        sh("ip", "netns", "add", host.namespace)
        try:
            sh("ip", "link", "add", host.head_link, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", inner, "netns", host.namespace)
            sh("ip", "addr", "add", f"{host.head_address}/24", "dev", host.head_link)
            sh("ip", "link", "set", host.head_link, "up")
            host.exec("ip", "addr", "add", f"{host.address}/24", "dev", inner)
            host.exec("ip", "link", "set", inner, "up")
            host.exec("ip", "link", "set", "lo", "up")
        except BaseException:
            host.remove()
            raise
        return host

    def exec(self, *args: str) -> str:
        return sh("ip", "netns", "exec", self.namespace, *args)

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *args]

    def pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True)
        return [int(p) for p in done.stdout.split()]

    def kill_all(self) -> int:
        """SIGKILL every process in the namespace (the host dies); how many there were."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(f"the processes of {self.namespace} to die", lambda: not self.pids(), 30)
        return len(pids)

    def set_link(self, up: bool) -> None:
        """Cut (or restore) the host's only link to the head: the host lives on, unreachable."""
        sh("ip", "link", "set", self.head_link, "up" if up else "down")

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.kill_all()
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.head_link], capture_output=True)  # gone with its peer


@dataclass
class Process:
    """A subprocess in its own session, its output in a log file; stopped with its whole group."""

    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, args: list[str], log: Path, env: dict[str, str]) -> Process:
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(popen, log)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)


class Forwarder:
    """TCP forwarding from ``listen`` to ``target`` on a thread's event loop: PostgreSQL listens on
    127.0.0.1 only, which a worker host cannot reach. In-process rather than socat, so the tests
    need nothing that .ci/run would have to install."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.listen, self.target = listen, target
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, *self.listen))
        ready.set()
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)  # open connections: cancelled and awaited, then closed
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        def stop():
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A Ray node's environment: this checkout's code, fast failure detection, no RAY_ADDRESS of ours."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        HEALTH_CHECK,
        PYTHONPATH=str(ROOT),
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        RAY_AUTH_MODE="disabled",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        **(extra or {}),
    )
    return env


def ray_start(address_args: list[str], ip: str, temp_dir: Path) -> list[str]:
    """``ray start`` for one node with one CPU (the machine has two), in the foreground (--block) so
    its process group holds the node's processes."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    return [
        RAY,
        "start",
        "--block",
        *address_args,
        f"--node-ip-address={ip}",
        "--num-cpus=1",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]


@dataclass
class Cluster:
    """A head node in the root namespace and worker nodes in their own namespaces, plus the stores."""

    base: Path
    host: WorkerHost  # the first worker host: its link carries the head's address for everyone
    head: Process | None = None
    gcs_address: str = ""
    workers: dict[str, tuple[WorkerHost, Process]] = field(default_factory=dict)
    forwarder: Forwarder | None = None
    pg_port: int = 0
    mlflow: Process | None = None
    mlflow_uri: str = ""
    databases: list[str] = field(default_factory=list)
    _gcs: object = None
    # Ray's temp dirs hold Unix sockets (at most 107 bytes of path): short ones under /tmp
    ray_dirs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="swc-", dir="/tmp")))

    @property
    def head_ip(self) -> str:
        return self.host.head_address

    @classmethod
    def start(cls, base: Path) -> Cluster:
        cluster = cls(base, WorkerHost.create(0))
        try:
            cluster._start_head()
            cluster._start_stores()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _start_head(self) -> None:
        port = free_port(self.head_ip)
        self.head = Process.start(
            ray_start(["--head", f"--port={port}", "--include-dashboard=false"], self.head_ip, self.ray_dirs / "head"),
            self.base / "ray-head.log",
            node_env(),
        )
        self.gcs_address = f"{self.head_ip}:{port}"
        wait_for("the Ray head", lambda: self.alive_nodes() >= 1 or self._died(self.head, "the Ray head"))

    def _died(self, process: Process, what: str) -> bool:
        if not process.alive():
            raise RuntimeError(f"{what} exited ({process.popen.returncode}): {process.tail()}")
        return False

    def add_worker(self, host: WorkerHost | None = None) -> WorkerHost:
        """Start a Ray node on ``host`` (the first worker host by default) and wait until it is alive."""
        host = host or self.host
        before = self.alive_nodes()
        name = f"ray-{host.namespace}-{len(self.workers)}"
        process = Process.start(
            host.command(ray_start([f"--address={self.gcs_address}"], host.address, self.ray_dirs / name)),
            self.base / f"{name}.log",
            node_env(),
        )
        self.workers[name] = (host, process)
        wait_for(
            f"the Ray node on {host.address}",
            lambda: self.alive_nodes() > before or self._died(process, f"the Ray node on {host.address}"),
        )
        return host

    def ensure_worker(self) -> None:
        """A live worker node on the first worker host: after a loss, the host's leftovers are
        killed, its link restored and a new node started (a dead node's id never comes back)."""
        if self.alive_nodes() >= 2:
            return
        self.host.kill_all()
        self.host.set_link(True)
        self.add_worker()

    def alive_nodes(self) -> int:
        return sum(1 for state in self.node_states().values() if state == "ALIVE")

    def node_states(self) -> dict[str, str]:
        """node id -> ALIVE / DEAD, as the GCS sees them ({} while it does not answer)."""
        from ray._raylet import GcsClient
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        try:
            if self._gcs is None:
                self._gcs = GcsClient(address=self.gcs_address)
            nodes = self._gcs.get_all_node_info(timeout=5)
        except Exception:  # noqa: BLE001 - not up yet
            return {}
        return {node_id.hex(): ("ALIVE" if n.state == GcsNodeInfo.ALIVE else "DEAD") for node_id, n in nodes.items()}

    def _start_stores(self) -> None:
        self.pg_port = free_port(self.head_ip)
        pg_host, pg_port = services.pg_address().rsplit(":", 1)
        self.forwarder = Forwarder((self.head_ip, self.pg_port), (pg_host, int(pg_port)))
        backend = self.create_database("mlflow")
        port = free_port(self.head_ip)
        self.mlflow_uri = f"http://{self.head_ip}:{port}"
        env = {**node_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.mlflow = Process.start(
            [
                PYTHON,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                services.pg_url(backend),
                "--artifacts-destination",
                str(self.base / "mlartifacts"),
                "--host",
                self.head_ip,
                "--port",
                str(port),
                "--workers",
                "1",
                "--allowed-hosts",
                f"{self.head_ip}:{port},{self.head_ip},localhost:*",
            ],
            self.base / "mlflow.log",
            env,
        )
        from sweep.ui import is_healthy

        wait_for(
            "the MLflow server's /health",
            lambda: is_healthy(f"{self.mlflow_uri}/health") or self._died(self.mlflow, "the MLflow server"),
            every_s=0.5,
        )

    def create_database(self, purpose: str) -> str:
        """A fresh database on the test PostgreSQL (dropped in close); its name."""
        from sqlalchemy import create_engine, text

        name = f"sweep_cluster_{purpose}_{os.getpid()}_{len(self.databases)}"
        engine = create_engine(services.pg_url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        self.databases.append(name)
        return name

    def storage_url(self, database: str) -> str:
        """The database as the Ray nodes reach it: through the forwarder on the head's address."""
        return f"postgresql://postgres@{self.head_ip}:{self.pg_port}/{database}"

    def driver_env(self) -> dict[str, str]:
        env = node_env()
        env.pop("CI", None)
        return env

    def close(self) -> None:
        for _host, process in self.workers.values():  # killed before a cut link is restored
            with contextlib.suppress(Exception):
                process.kill()
        for process in (self.mlflow, self.head):
            if process is not None:
                with contextlib.suppress(Exception):
                    process.kill()
        self.host.remove()
        shutil.rmtree(self.ray_dirs, ignore_errors=True)
        if self.forwarder is not None:
            self.forwarder.close()
        if self.databases:
            from sqlalchemy import create_engine, text

            engine = create_engine(services.pg_url("postgres"), isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                for name in self.databases:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            engine.dispose()
