"""hack/run.sh's process helpers: start_proc waits until the component really runs, and a component
that dies during start-up is reported with its exit status or signal (CI once saw "kubelet exited
during startup" with an empty log and nothing else to go on).

The helpers are sourced into bash with a throwaway cluster dir and run real child processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HACK = Path(__file__).resolve().parents[2] / "hack"

# A long-running component, one that exits with status 3, and one that dies by SIGKILL. Each names
# the cluster dir in its command line, as every real component does (runs_component checks it).
SLEEPS = "import sys, time; time.sleep(30)"
EXITS = "import sys; sys.exit(3)"
KILLED = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


def _bash(state: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = f"""
set -u
source "{HACK}/lib.sh"
source "{HACK}/run.sh"
mkdir -p "${{STATE}}/logs" "${{STATE}}/pids"
{body}
"""
    env = dict(os.environ, ELASTISERVE_CLUSTER_DIR=str(state))
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def _start(name: str, code: str) -> str:
    return f'start_proc {name} "{sys.executable}" -c "{code}" "${{STATE}}/{name}-marker"'


@pytest.fixture
def state(tmp_path: Path):
    yield tmp_path / "cluster"
    # stop whatever a test left running, by the pid it recorded
    for pidfile in (tmp_path / "cluster" / "pids").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), 9)
        except (ProcessLookupError, ValueError):
            pass


def test_a_component_is_alive_as_soon_as_start_proc_returns(state: Path):
    # Many starts in a row, each checked at once: the check must never land between the execs.
    body = "fails=0\n" + "for i in $(seq 1 20); do\n  " + _start("sleeper", SLEEPS) + "\n" + \
        '  alive sleeper || fails=$((fails + 1))\n  kill -KILL "$(pid_of sleeper)"\ndone\necho "fails=${fails}"'
    out = _bash(state, body)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fails=0"


def test_a_component_that_exits_during_startup_is_reported_with_its_status(state: Path):
    out = _bash(state, _start("broken", EXITS) + "\nwait_component broken 10 'never' false")
    assert out.returncode == 1
    assert "broken (pid" in out.stderr and "exited with status 3 during startup" in out.stderr
    assert f"see {state}/logs/broken.log" in out.stderr


def test_a_component_killed_during_startup_is_reported_with_the_signal(state: Path):
    out = _bash(state, _start("victim", KILLED) + "\nwait_component victim 10 'never' false")
    assert out.returncode == 1
    assert "was killed by SIGKILL during startup" in out.stderr


def test_wait_component_returns_once_the_check_passes(state: Path):
    out = _bash(state, _start("healthy", SLEEPS) + '\nwait_component healthy 10 "ok" true && echo ready\n'
                'kill -KILL "$(pid_of healthy)"')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ready"
