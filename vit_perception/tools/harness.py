"""Child processes for the demo, the live bench and the process-level tests.

    cli_command / NodeProcess  `vit-perception ...` in its own process, stderr to a file,
                               ready when a line appears, stopped by signal, CPU time measured
    loopback_env / pick_domain DDS on 127.0.0.1 only (unicast: discovers Fast DDS peers too),
                               a domain id that differs between concurrent runs
    RosEnvironment             a Python that has rclpy and the built vit_perception.msg: this
                               one, or the Jazzy wheels venv made by scripts/check_ros_jazzy.sh
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vit_perception.drivers.rtps_ports import bound_udp_ports, domains_in_use
from vit_perception.errors import ConfigError

# Unicast discovery on 127.0.0.1 only: nothing leaves the machine, works where multicast is
# unavailable (containers, CI), and discovers Fast DDS peers (a Cyclone config with multicast on
# `lo` does not, measured with rclpy + Fast DDS from the Jazzy wheels).
LOOPBACK_URI = (
    '<CycloneDDS><Domain Id="any"><General><Interfaces>'
    '<NetworkInterface address="127.0.0.1"/></Interfaces>'
    '<AllowMulticast>false</AllowMulticast></General>'
    '<Discovery><ParticipantIndex>auto</ParticipantIndex>'
    '<MaxAutoParticipantIndex>32</MaxAutoParticipantIndex>'
    '<Peers><Peer Address="127.0.0.1"/></Peers></Discovery>'
    '</Domain></CycloneDDS>')

DDS_READY = 'vit-perception node: running'  # printed by `vit-perception node --backend dds`
ROS_READY = 'configured:'  # logged by the rclpy node once its model is loaded
ROS_ENV_VARIABLE = 'VIT_PERCEPTION_ROS_ENV'  # default for --ros-env


def cli_command(subcommand: str, *args: str, python: str | None = None) -> list[str]:
    """argv running `vit-perception SUBCOMMAND ARGS` (the CLI entry point) with `python`."""
    return [python or sys.executable, '-m', 'vit_perception.tools.cli', subcommand, *args]


def loopback_env(base: dict | None = None, domain: int | None = None) -> dict:
    """Environment for DDS child processes: Cyclone and Fast DDS on 127.0.0.1 only.

    `domain` sets ROS_DOMAIN_ID (rclpy and the DDS node's domain_id -1 read it); None removes it.
    """
    env = dict(os.environ if base is None else base)
    env['CYCLONEDDS_URI'] = LOOPBACK_URI
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if domain is None:
        env.pop('ROS_DOMAIN_ID', None)
    else:
        env['ROS_DOMAIN_ID'] = str(domain)
    env.setdefault('PYTHONUNBUFFERED', '1')
    return env


# Domain ids for private runs: 1..101. 0 is ROS 2's default (a user's robot); from 102 on the
# domain's UDP ports fall in Linux's ephemeral range (drivers/rtps_ports.py).
PRIVATE_DOMAINS = range(1, 102)


def pick_domain(salt: int | None = None, in_use: set[int] | None = None) -> int:
    """A private DDS domain id (PRIVATE_DOMAINS) no process on this host is using (none of its
    ports is bound; `in_use` overrides what /proc says), starting from one that differs between
    concurrently starting processes; `salt` (a counter) makes consecutive calls in one process
    differ too. When every private domain is in use, the starting one."""
    salt = int(time.monotonic() * 1000) if salt is None else salt
    in_use = domains_in_use(bound_udp_ports()) if in_use is None else in_use
    start = (os.getpid() * 7 + salt) % len(PRIVATE_DOMAINS)
    order = [PRIVATE_DOMAINS[(start + i) % len(PRIVATE_DOMAINS)]
             for i in range(len(PRIVATE_DOMAINS))]
    return next((d for d in order if d not in in_use), order[0])


def interruptible_child() -> None:
    """In a child process (Popen preexec_fn): SIGINT back to its default action.

    A shell starts background jobs (`cmd &`, CI scripts) with SIGINT ignored and children inherit
    that, so Python would not turn SIGINT into KeyboardInterrupt; the children started here are
    stopped with SIGINT first."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until true or `timeout` s pass; its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


class NodeProcess:
    """A child process (by default `vit-perception node --backend dds`); stderr goes to a file.

    Use as a context manager: the process is killed on exit if it is still running.
    """

    def __init__(self, model: str | Path | None, domain: int, overrides: list[str] = (), *,
                 log_path: str | Path | None = None, env: dict | None = None,
                 argv: list[str] | None = None, ready: str = DDS_READY,
                 cwd: str | Path | None = None):
        self.domain = domain
        self.cwd = cwd
        self.ready = ready
        self.argv = argv or cli_command('node', '--backend', 'dds', '--model', str(model),
                                        '--set', f'domain_id={domain}',
                                        *[a for item in overrides for a in ('--set', item)])
        self._own_log = log_path is None
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix='vit_perception_node_', suffix='.log')
            os.close(handle)
        self.log_path = Path(log_path)
        self._env = loopback_env(env) if argv is None else dict(env or os.environ)
        self.proc: subprocess.Popen | None = None

    def start(self) -> NodeProcess:
        with open(self.log_path, 'wb') as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, env=self._env,
                                         cwd=self.cwd, preexec_fn=interruptible_child)
        return self

    def wait_running(self, timeout: float = 120.0) -> None:
        """Block until the ready line appears; RuntimeError (with its stderr) otherwise."""
        deadline = time.monotonic() + timeout
        while self.ready not in self.stderr():
            if self.proc.poll() is not None:
                raise RuntimeError(f'node exited with {self.proc.returncode} before running:\n'
                                   f'{self.stderr()[-3000:]}')
            if time.monotonic() > deadline:
                raise RuntimeError(f'node not running after {timeout:.0f} s:\n'
                                   f'{self.stderr()[-3000:]}')
            time.sleep(0.05)

    def stderr(self) -> str:
        try:
            return self.log_path.read_text(errors='replace')
        except FileNotFoundError:
            return ''

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Send `sig`, wait for the exit (kill after `timeout`); the exit code."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


@dataclass(frozen=True)
class RosEnvironment:
    """A Python interpreter with rclpy and vit_perception.msg, and the environment it needs."""

    python: str
    env: dict
    where: str  # for messages: 'this Python' or the Jazzy work folder

    @classmethod
    def find(cls, work_dir: str | Path | None = None) -> RosEnvironment:
        """This Python when it has rclpy (and no `work_dir`), else the Jazzy wheels venv in
        `work_dir` (default $VIT_PERCEPTION_ROS_ENV) made by scripts/check_ros_jazzy.sh --dir.

        ConfigError (one line, how to fix) when neither is there.
        """
        work_dir = work_dir or os.environ.get(ROS_ENV_VARIABLE, '')
        if not work_dir:
            if _importable('rclpy') and _importable('vit_perception.msg'):
                return cls(sys.executable, dict(os.environ), 'this Python')
            raise ConfigError('rclpy (with the built vit_perception.msg) is not importable '
                              'here: source a ROS 2 workspace with this package built, or run '
                              '`bash scripts/check_ros_jazzy.sh --dir DIR` once and pass '
                              f'--ros-env DIR (or set {ROS_ENV_VARIABLE}=DIR)')
        return cls.from_jazzy_dir(Path(work_dir))

    @classmethod
    def from_jazzy_dir(cls, work_dir: Path) -> RosEnvironment:
        """The environment scripts/check_ros_jazzy.sh exports for its venv + install."""
        venv, install = work_dir / 'venv', work_dir / 'install'
        python = venv / 'bin' / 'python'
        sites = sorted(install.glob('lib/python3*/site-packages'))
        if not python.exists() or not sites or not (sites[0] / 'vit_perception' / 'msg').is_dir():
            raise ConfigError(f'--ros-env {work_dir}: no Jazzy venv with vit_perception built '
                              'there; expected what `bash scripts/check_ros_jazzy.sh --dir '
                              f'{work_dir}` makes (venv/, install/)')
        site = sites[0]
        venv_site = venv / site.relative_to(install)
        ros_libs = sorted(str(p) for p in venv_site.glob('ros_*.libs') if p.is_dir())
        env = dict(os.environ)
        env.update({
            'AMENT_PREFIX_PATH': f'{install}:{venv}',
            'PYTHONPATH': str(site),
            'LD_LIBRARY_PATH': ':'.join([str(install / 'lib'), str(venv / 'lib'), *ros_libs,
                                         *filter(None, [os.environ.get('LD_LIBRARY_PATH')])]),
            'PATH': f'{venv / "bin"}:{os.environ.get("PATH", "")}',
            'RMW_IMPLEMENTATION': os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp'),
        })
        return cls(str(python), env, str(work_dir))


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def kill_child(proc: subprocess.Popen | None) -> None:
    """Kill a child process if it is still running, and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def paced(duration: float, rates: dict[str, float], stop) -> Iterator[tuple[str, int]]:
    """Yield (stream, ns late) each time a stream is due, for `duration` s.

    Streams run on absolute deadlines of their rate (Hz); one that falls behind skips the
    deadlines it missed rather than bursting. Ends early when `stop` (an Event) is set.
    """
    periods = {name: round(1e9 / rate) for name, rate in rates.items()}
    start = time.perf_counter_ns()
    end = start + int(duration * 1e9)
    due = dict.fromkeys(periods, start)
    while not stop.is_set():
        first = min(due.values())
        if first >= end:
            return
        wait = first - time.perf_counter_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        now = time.perf_counter_ns()
        for name, period in periods.items():
            if now >= due[name]:
                yield name, now - due[name]
                due[name] += period * max(1, (now - due[name]) // period + 1)


def moving_pose(stamp_ns: int) -> tuple[list[float], list[float]]:
    """A slowly moving end-effector pose at `stamp_ns`: position xyz, quaternion xyzw."""
    phase = stamp_ns / 1e9
    yaw = 0.1 * math.sin(phase)
    return ([0.4 + 0.05 * math.sin(phase), 0.05 * math.cos(phase), 0.3],
            [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])
