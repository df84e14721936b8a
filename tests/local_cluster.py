"""A real multi-node Ray cluster on one machine: a head and worker nodes, each its own `ray start`.

Every node is a separate ``ray start --block`` process group with its own resources, temp dir and
object store, so killing a node's process group is what a lost machine looks like to Ray. Token
authentication is on (Ray 2.60 turns it on for clusters started with ``ray start``); the token
lives in this object and in the nodes' environment only, never in ``~/.ray``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from lrat_ray.infra.chat_client import bearer_headers
from lrat_ray.infra.runtime import free_port


class LocalCluster:
    def __init__(self, root: Path, head_cpus: int = 1, object_store_bytes: int = 150 * 1024 * 1024):
        self.root = root
        # Ray's unix sockets live under each node's temp dir, and their paths may not exceed 107 bytes.
        self.temp_root = Path(tempfile.mkdtemp(prefix="lrc-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self.port = free_port()
        self.dashboard_port = free_port()
        self.head_cpus = head_cpus
        self.object_store_bytes = object_store_bytes
        self.nodes: dict[str, subprocess.Popen] = {}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            HF_HUB_OFFLINE="1",
            RAY_USAGE_STATS_ENABLED="0",
            # notice a dead node in ~3 s instead of ~15 s
            RAY_health_check_period_ms="1000",
            RAY_health_check_failure_threshold="3",
        )

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def headers(self) -> dict:
        return bearer_headers(self.token)

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "w")
        # Every node on this host needs its own agent ports: the defaults (e.g. the dashboard agent's
        # 52365) are taken by the first Ray here, which may be another test's local Ray.
        ports = [
            arg
            for flag in (
                "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port",
                "--metrics-export-port",
                "--runtime-env-agent-port",
            )
            for arg in (flag, str(free_port()))
        ]
        self.nodes[name] = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--block",
                "--disable-usage-stats",
                "--object-store-memory",
                str(self.object_store_bytes),
                "--temp-dir",
                str(self.temp_root / name),
                *ports,
                *args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_head(self) -> None:
        self._start(
            "head",
            [
                "--head",
                "--port",
                str(self.port),
                "--num-cpus",
                str(self.head_cpus),
                "--ray-client-server-port",
                str(free_port()),
                "--include-dashboard",
                "true",
                "--dashboard-port",
                str(self.dashboard_port),
            ],
        )

    def add_worker(self, name: str, cpus: int = 1, resources: dict | None = None) -> None:
        self._start(
            name,
            [
                "--address",
                f"127.0.0.1:{self.port}",
                "--num-cpus",
                str(cpus),
                "--resources",
                json.dumps(resources or {}),
            ],
        )

    def alive_nodes(self) -> int:
        try:
            reply = httpx.get(f"{self.dashboard}/nodes?view=summary", headers=self.headers, timeout=5)
        except httpx.HTTPError:
            return 0
        if reply.status_code != 200:
            return 0
        summary = reply.json()["data"]["summary"]
        return sum(1 for node in summary if node["raylet"]["state"] == "ALIVE")

    def wait_for_nodes(self, count: int, timeout_s: float = 90) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.alive_nodes() == count:
                return
            for name, proc in self.nodes.items():
                if proc.poll() is not None and name == "head":
                    raise RuntimeError(f"head node exited: {(self.root / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"cluster did not reach {count} alive nodes (has {self.alive_nodes()})")

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process group: raylet, agents, and with them its workers."""
        proc = self.nodes.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def submit(self, entrypoint: str, runtime_env: dict, timeout_s: float = 60) -> str:
        """Submit a job, retrying while the head's job agent is still starting."""
        deadline = time.time() + timeout_s
        while True:
            try:
                return self.jobs().submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.time() > deadline:
                    raise
                time.sleep(1)

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers=self.headers)

    def stop(self) -> None:
        """Kill every node (a graceful `ray stop` drains for up to 30 s; nothing here needs draining)."""
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            self.kill(name)
        shutil.rmtree(self.temp_root, ignore_errors=True)
