"""`paddler dashboard` in a pseudo-terminal against a real balancer and agent (Gemma)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pexpect

from tests.integration.cluster import Cluster

AGENT = "tty-agent"
# Rich's colour codes between two differently styled pieces of one line.
_STYLES = r"(?:\x1b\[[0-9;]*m)*"


def test_dashboard_shows_the_agent_reconnects_after_a_balancer_restart_and_quits_on_q(
    tmp_path: Path, gemma_model_path: Path
) -> None:
    cluster = Cluster(tmp_path)
    dashboard = None
    try:
        cluster.start_balancer()
        cluster.start_agent(AGENT, slots=2, threads=1)
        cluster.put_desired_state(gemma_model_path)
        cluster.wait_for_ready_agents([AGENT])
        dashboard = pexpect.spawn(
            sys.executable,
            [
                *("-m", "paddler_trio", "dashboard"),
                *("--management-addr", cluster.management_addr, "--max-buffered-requests", "30"),
            ],
            dimensions=(50, 180),
            timeout=20,
            encoding="utf-8",
            env={"TERM": "xterm-256color", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        dashboard.expect(AGENT)
        dashboard.expect("gemma-3-270m")
        dashboard.expect("0 states, 0/1024 MiB")  # the prompt state cache, at the agent's default size
        dashboard.expect("general.architecture")  # the selected agent's metadata
        dashboard.expect(rf"buffered requests {_STYLES}0 / 30")

        assert cluster.balancer is not None
        cluster.balancer.stop()
        dashboard.expect("lost the balancer")
        cluster.start_balancer()
        dashboard.expect("● live")
        dashboard.expect(AGENT, timeout=30)  # the agent registers again

        dashboard.send("q")
        dashboard.expect(pexpect.EOF)
        dashboard.close()
        assert dashboard.exitstatus == 0
    finally:
        if dashboard is not None and dashboard.isalive():
            dashboard.terminate(force=True)
        cluster.shutdown()


def test_dashboard_exits_0_on_sigterm(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    dashboard = None
    try:
        cluster.start_balancer()
        dashboard = pexpect.spawn(
            sys.executable,
            ["-m", "paddler_trio", "dashboard", "--management-addr", cluster.management_addr],
            dimensions=(50, 180),
            timeout=20,
            encoding="utf-8",
            env={"TERM": "xterm-256color", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        dashboard.expect("● live")
        dashboard.kill(signal.SIGTERM)
        dashboard.expect(pexpect.EOF)
        dashboard.close()
        assert dashboard.exitstatus == 0, dashboard.before
        assert "Traceback" not in (dashboard.before or "")
    finally:
        if dashboard is not None and dashboard.isalive():
            dashboard.terminate(force=True)
        cluster.shutdown()
