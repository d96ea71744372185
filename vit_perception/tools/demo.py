"""`vit-perception demo`: the MuJoCo simulator and the perception node as separate processes
talking over the ROS 2 wire (Cyclone DDS, loopback only, a private domain id), closed loop.

    parent (this process) ── spawns ──> sim process   `vit-perception sim` (lock-step, records)
                          └─ spawns ──> node process  the DDS node on sim time (/clock)

The sim publishes /camera/image_raw, /ee_pose and /clock and waits for the node's
/vit_perception/action; the node runs the checkpoint. Afterwards the parent reads the sim's
per-episode report and recorded bags and writes report.md with figures: the camera frame of
each episode with the end-effector path drawn, and success per episode. Latency is measured
inside the node process: wall time from the image callback to the action chunk it produced,
and to the first control-rate action conditioned on it.

Children get PR_SET_PDEATHSIG (Linux), and are stopped (SIGINT, then SIGTERM, then SIGKILL)
on Ctrl-C, errors and timeouts: no orphan processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from vit_perception.tools import harness


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--task', choices=['reach', 'aloha-transfer-cube'], default='reach',
                        help='reach: the table-top arm (default); aloha-transfer-cube: the ALOHA '
                        'bimanual cube transfer (ACT) with its shipped checkpoint')
    parser.add_argument('--pictures', type=int, default=10,
                        help='aloha-transfer-cube: pictures for the first N episodes (default 10)')
    parser.add_argument('--episodes', type=int, default=5, help='episodes to run (default 5)')
    parser.add_argument('--seed', type=int, default=1000,
                        help='episode i uses seed SEED + i (default 1000; the shipped checkpoint '
                        'was trained on seeds below 1000)')
    parser.add_argument('--report', default='demo_report', metavar='DIR',
                        help='where report.md, figures, logs and bags go (default ./demo_report)')
    parser.add_argument('--model', default='', metavar='CKPT',
                        help='checkpoint directory (default: the shipped checkpoint)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS domain id (default: a private one derived from the process id)')
    parser.add_argument('--image-size', type=int, default=None,
                        help='sim camera size in pixels (default: what the shipped checkpoint '
                        'was trained on: reach 96; aloha-transfer-cube 180, the top camera '
                        'height, width 4/3 of it)')
    parser.add_argument('--max-steps', type=int, default=60,
                        help='control steps (0.1 s) before an episode times out (default 60)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY=VALUE', help='node parameter override, e.g. --set '
                        'control.ensemble_coeff=0.1 (repeatable)')
    parser.add_argument('--timeout', type=float, default=900.0,
                        help='wall seconds before the demo gives up (default 900)')
    parser.add_argument('--network', choices=['loopback', 'default'], default='loopback',
                        help='loopback: DDS on 127.0.0.1 only (default); default: Cyclone '
                        'DDS defaults or $CYCLONEDDS_URI')


def run(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError

    if args.episodes < 1:
        raise ConfigError(f'--episodes {args.episodes}: expected >= 1')
    aloha = args.task == 'aloha-transfer-cube'
    if aloha:
        from vit_perception.tools.aloha import demo as task
    checkpoint = _resolve_checkpoint(args.model, task.DEFAULT_CHECKPOINT if aloha else None)
    if args.image_size is None:
        args.image_size = task.IMAGE_HEIGHT if aloha else 96
    report_dir = Path(args.report)
    if (report_dir / 'bags').exists():
        raise ConfigError(f'{report_dir}/bags exists: expected a new --report directory (bags '
                          'are never overwritten)')
    report_dir.mkdir(parents=True, exist_ok=True)
    domain = args.domain_id if args.domain_id is not None else harness.pick_domain()
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED='1')
    if args.network == 'loopback':
        env['CYCLONEDDS_URI'] = harness.LOOPBACK_URI  # unicast on 127.0.0.1 only
    env.setdefault('MUJOCO_GL', os.environ.get('MUJOCO_GL', 'egl'))
    python = sys.executable
    node_cmd = [python, '-m', 'vit_perception.tools.demo', 'node', '--model', str(checkpoint),
                '--domain-id', str(domain), '--stats', str(report_dir / 'node_stats.json')]
    for item in (task.node_overrides(checkpoint) if aloha else []) + args.overrides:
        node_cmd += ['--set', item]
    sim_cmd = [python, '-m', 'vit_perception.tools.cli', 'sim', '--episodes',
               str(args.episodes), '--seed', str(args.seed), '--domain-id', str(domain),
               '--image-size', str(args.image_size),
               *(['--task', args.task] if aloha else ['--max-steps', str(args.max_steps)]),
               '--record', str(report_dir / 'bags'), '--report', str(report_dir / 'sim.json'),
               '--startup-timeout', str(max(60.0, min(args.timeout, 300.0)))]
    print(f'vit-perception demo: {args.episodes} episodes from seed {args.seed}, domain {domain}'
          f' ({args.network}), model {checkpoint}', file=sys.stderr, flush=True)
    started = time.monotonic()
    children = Children(report_dir)
    try:
        node = children.start('node', node_cmd, env, echo=('error', 'Traceback'))
        sim = children.start('sim', sim_cmd, env, echo=('episode', 'error', 'Traceback'))
        deadline = started + args.timeout
        while sim.poll() is None:
            if node.poll() is not None:
                raise ConfigError(f'the node process exited early (code {node.returncode}); '
                                  f'see {report_dir / "node.log"}')
            if time.monotonic() > deadline:
                raise ConfigError(f'demo did not finish within --timeout {args.timeout:g} s; '
                                  f'see {report_dir}/sim.log and node.log')
            time.sleep(0.2)
        if sim.returncode != 0:
            raise ConfigError(f'the sim process failed (code {sim.returncode}); see '
                              f'{report_dir / "sim.log"}')
        children.stop('node')
    finally:
        children.stop_all()
    elapsed = time.monotonic() - started
    summary = (task.write_report if aloha else write_report)(report_dir, checkpoint, args,
                                                              domain, elapsed)
    print(summary)
    return 0


def _resolve_checkpoint(model: str, default: Path | None = None) -> Path:
    from vit_perception.core.engine import DEFAULT_CHECKPOINT
    from vit_perception.errors import CheckpointError

    path = Path(model) if model else (default or DEFAULT_CHECKPOINT)
    if not (path / 'model.safetensors').is_file():
        raise CheckpointError(f'{path}: no checkpoint there (config.json + model.safetensors + '
                              'normalization.json); regenerate the shipped one with '
                              '`vit-perception train --regenerate-default` or pass --model DIR')
    return path.resolve()


# ------------------------------------------------------------------------ child processes ---

class Children:
    """Child processes with logs in the report directory; stopped on any exit path."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, cmd: list[str], env: dict, echo: tuple[str, ...] = ()):
        log = open(self.log_dir / f'{name}.log', 'w')  # noqa: SIM115 - closed by the pump
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                preexec_fn=_die_with_parent)
        self.procs[name] = proc
        thread = threading.Thread(target=_pump, args=(proc, log, name, echo), daemon=True)
        thread.start()
        self._threads.append(thread)
        return proc

    def stop(self, name: str, grace: float = 10.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in ('sim', 'node'):
            self.stop(name, grace=5.0)
        for thread in self._threads:
            thread.join(timeout=5.0)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so nothing is left orphaned; and
    SIGINT (what `Children.stop` sends first) acts even when the demo runs as a background job."""
    harness.interruptible_child()
    try:
        import ctypes

        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pump(proc: subprocess.Popen, log, name: str, echo: tuple[str, ...]) -> None:
    with log:
        for line in proc.stdout:
            log.write(line)
            if any(word in line for word in echo):
                text = line.rstrip().removeprefix(f'[vit-perception {name}] ')
                print(f'[{name}] {text}', file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ the node child ---

def node_main(argv: list[str]) -> int:
    """The node process: the DDS node on sim time; writes latency stats at exit."""
    parser = argparse.ArgumentParser(prog='vit_perception.tools.demo node')
    parser.add_argument('--model', required=True)
    parser.add_argument('--domain-id', type=int, required=True)
    parser.add_argument('--stats', required=True)
    parser.add_argument('--set', dest='overrides', action='append', default=[])
    args = parser.parse_args(argv)

    import logging

    from vit_perception.config import load_node_config
    from vit_perception.core.engine import Engine
    from vit_perception.core.node import PerceptionCore
    from vit_perception.drivers.dds_node import run_dds_node

    logging.basicConfig(level=logging.INFO, format='[node] %(levelname)s %(message)s')
    config = load_node_config(None, [f'domain_id={args.domain_id}',
                                     f'engine.model={args.model}', *args.overrides])
    engine = Engine.from_config(config.engine)
    if engine.config.ablate_images:
        print('[node] the checkpoint was trained with --ablate-images: the model zeroes every '
              'image', file=sys.stderr, flush=True)
    timing = WallLatency()
    cores = []

    def factory(*a, **kw):
        core = PerceptionCore(*a, **kw)
        timing.attach(core)
        cores.append(core)
        return core

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f'[node] running {engine.model_id} ({engine.dtype}, {engine.fusion} fusion) on domain '
          f'{args.domain_id}, sim time', file=sys.stderr, flush=True)
    try:
        run_dds_node(config, engine, stop, use_sim_time=True, core_factory=factory)
    finally:
        stats = timing.summary()
        if cores:
            stats['engine_ms'] = {stage: {'p50': p50, 'p99': p99} for stage, (p50, p99)
                                  in cores[0].latency.percentiles().items()}
            stats['drops'] = cores[0].drops.counts()
        stats['dtype'] = str(engine.dtype).replace('torch.', '')
        Path(args.stats).write_text(json.dumps(stats, indent=2) + '\n')
    return 0


class WallLatency:
    """Wall-clock latency inside the node: image callback -> chunk out -> first action out."""

    def __init__(self):
        self._lock = threading.Lock()
        self._image_in: dict[int, float] = {}  # image stamp -> perf_counter at the callback
        self.to_chunk: list[float] = []
        self.to_action: list[float] = []

    def attach(self, core) -> None:
        on_image, outputs = core.on_image, core.outputs
        publish_chunk, publish_action = outputs.publish_chunk, outputs.publish_action

        def image(frame):
            with self._lock:
                self._image_in.setdefault(frame.stamp_ns, time.perf_counter())
            on_image(frame)

        def chunk(result):
            publish_chunk(result)
            with self._lock:
                start = self._image_in.get(result.observation_stamp_ns)
                if start is not None:
                    self.to_chunk.append((time.perf_counter() - start) * 1e3)

        def action(stamp_ns, values, observation_stamp_ns):
            publish_action(stamp_ns, values, observation_stamp_ns)
            with self._lock:
                start = self._image_in.pop(observation_stamp_ns, None)
                if start is not None:
                    self.to_action.append((time.perf_counter() - start) * 1e3)
                for stamp in [s for s in self._image_in if s < observation_stamp_ns]:
                    del self._image_in[stamp]

        core.on_image = image
        outputs.publish_chunk = chunk
        outputs.publish_action = action

    def summary(self) -> dict:
        import numpy as np

        def pct(values):
            if not values:
                return {'count': 0}
            p50, p99 = np.percentile(values, [50, 99])
            return {'count': len(values), 'p50': round(float(p50), 2),
                    'p99': round(float(p99), 2)}

        with self._lock:
            return {'image_to_chunk_ms': pct(self.to_chunk),
                    'image_to_action_ms': pct(self.to_action)}


# ------------------------------------------------------------------------------- report ---

def write_report(report_dir: Path, checkpoint: Path, args, domain: int, elapsed: float) -> str:
    """report.md + episode_NN.png + success.png from sim.json, the bags and node_stats.json."""
    import logging

    logging.getLogger('OpenGL').setLevel(logging.WARNING)  # PyOpenGL's import-time INFO line
    sim = json.loads((report_dir / 'sim.json').read_text())
    stats_path = report_dir / 'node_stats.json'
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    episodes = sim['episodes']
    figures = []
    for episode in episodes:
        if episode.get('path'):
            png = report_dir / f'episode_{episode["index"]:02d}.png'
            draw_episode(Path(episode['path']), episode, png, args.image_size)
            figures.append(png.name)
    draw_success(episodes, report_dir / 'success.png')
    successes = sum(e['success'] for e in episodes)
    rate = successes / len(episodes)
    lines = report_header('vit-perception demo', checkpoint, len(episodes), args, domain,
                          elapsed) + [
        f'**Success: {successes}/{len(episodes)} ({rate:.0%})**', '',
        '| episode | seed | success | steps | final error (m) | missed actions |',
        '|---|---|---|---|---|---|']
    for e in episodes:
        lines.append(f'| {e["index"]} | {e["seed"]} | {"yes" if e["success"] else "no"} | '
                     f'{e["steps"]} | {e["final_error_m"]:.3f} | {e.get("missed_actions", 0)} |')
    lines += latency_lines(stats) + [
              "The action waits for the node's control timer, which runs on sim time: in "
              'lock-step the sim advances /clock once it has seen the chunk, so image -> action '
              'includes one DDS round trip to the sim.', '',
              '![success per episode](success.png)', '']
    for name in figures:
        lines += [f'![{name}]({name})', '']
    (report_dir / 'report.md').write_text('\n'.join(lines))
    return (f'success {successes}/{len(episodes)} ({rate:.0%}); '
            f'{latency_summary(stats, report_dir / "report.md")}')


def report_header(title: str, checkpoint: Path, episodes: int, args, domain: int,
                  elapsed: float) -> list[str]:
    """The report's title, how the run was made and the command that reruns it (every task)."""
    return [f'# {title}', '',
            f'Checkpoint `{checkpoint}`, {episodes} episodes from seed {args.seed}, sim and node '
            f'as separate processes over Cyclone DDS (ROS 2 wire), domain {domain}, '
            f'{args.network} network, lock-step on sim time; {elapsed:.0f} s wall.', '',
            f'Command: `{demo_command(args)}`', '']


def demo_command(args: argparse.Namespace) -> str:
    """The `vit-perception demo` command line of these arguments (domain and report directory
    left to their defaults)."""
    words = ['vit-perception', 'demo', '--task', args.task, '--episodes', str(args.episodes),
             '--seed', str(args.seed), '--image-size', str(args.image_size)]
    if args.task == 'reach':
        words += ['--max-steps', str(args.max_steps)]
    else:
        words += ['--pictures', str(args.pictures)]
    words += ['--model', args.model] if args.model else []
    words += ['--network', args.network] if args.network != 'loopback' else []
    for item in args.overrides:
        words += ['--set', item]
    return shlex.join(words)


def latency_summary(stats: dict, report: Path) -> str:
    """The one-line summary's latency part (node_stats.json) and where the report is."""
    chunk = stats.get('image_to_chunk_ms', {})
    action = stats.get('image_to_action_ms', {})
    nan = float('nan')
    return (f'latency image->chunk p50 {chunk.get("p50", nan):.1f} ms p99 '
            f'{chunk.get("p99", nan):.1f} ms, image->action p50 {action.get("p50", nan):.1f} ms; '
            f'report: {report}')


def latency_lines(stats: dict) -> list[str]:
    """The report's latency section from node_stats.json."""
    engine_total = stats.get('engine_ms', {}).get('total', {})
    return ['', '## Latency (wall clock, measured inside the node process)', '',
            '| path | p50 ms | p99 ms | samples |', '|---|---|---|---|',
            _latency_row('image in -> action chunk out', stats.get('image_to_chunk_ms', {})),
            _latency_row('image in -> first action out (incl. the sim-time tick)',
                         stats.get('image_to_action_ms', {})),
            _latency_row(f'engine.infer total ({stats.get("dtype", "?")})',
                         dict(engine_total, count='')), '']


def _latency_row(label: str, values: dict) -> str:
    if 'p50' not in values:
        return f'| {label} | - | - | 0 |'
    return f'| {label} | {values["p50"]:.2f} | {values["p99"]:.2f} | {values.get("count", "")} |'


def read_episode(bag: Path, image_topic: str = '/camera/image_raw'):
    """(first scene frame (H, W, 3) uint8, last frame, ee positions (N, 3)) from a sim bag."""
    import numpy as np

    from vit_perception.config import NodeConfig
    from vit_perception.core.images import image_to_array
    from vit_perception.drivers.bag import BagInput

    config = NodeConfig()
    config.topics.cameras = [image_topic]
    frames, positions = [], []
    with BagInput(bag, config) as reader:
        for event in reader.events():
            if event.kind == 'image':
                frames.append(np.array(image_to_array(event.value).pixels))
            elif event.kind == 'pose':
                positions.append(event.value.position)
    return frames[0], frames[-1], np.array(positions).reshape(-1, 3)


def project(points, image_size: int, camera: str = 'scene'):
    """World points (N, 3) -> pixel (u, v) (N, 2) in the sim camera (pinhole, MuJoCo fovy)."""
    import mujoco
    import numpy as np

    from vit_perception.tools.sim.scene import ReachEnv

    with ReachEnv(0, image_size=image_size) as env:
        model, data = env.model, env.data
        cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        position = data.cam_xpos[cam].copy()
        rotation = data.cam_xmat[cam].reshape(3, 3).copy()
        fovy = float(model.cam_fovy[cam])
    focal = 0.5 * image_size / np.tan(np.deg2rad(fovy) / 2)
    local = (np.asarray(points) - position) @ rotation  # (N, 3): x right, y up, -z forward
    depth = -local[:, 2]
    u = image_size / 2 + focal * local[:, 0] / depth
    v = image_size / 2 - focal * local[:, 1] / depth
    return np.stack([u, v], axis=1)  # (N, 2)


def draw_episode(bag: Path, episode: dict, png: Path, image_size: int) -> None:
    """First and last scene frame; the end-effector path and the goal drawn on the first."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    from vit_perception.tools.sim.scene import ReachTask

    first, last, positions = read_episode(bag)
    size = first.shape[0]
    path = project(positions, size) if len(positions) else np.zeros((0, 2))
    goal = np.array(episode['target']) + np.array([0.0, 0.0, ReachTask().hover_height])
    goal_uv = project(goal[None], size)[0]
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    for ax, image, title in ((axes[0], first, 'start, path'), (axes[1], last, 'end')):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
        ax.axis('off')
    axes[0].plot(path[:, 0], path[:, 1], '-', color='yellow', lw=1.5, label='end effector')
    if len(path):
        axes[0].plot(*path[0], 'o', color='yellow', ms=4)
    axes[0].plot(*goal_uv, 'x', color='cyan', ms=8, mew=2, label='goal')
    axes[0].legend(loc='lower left', fontsize=7, framealpha=0.6)
    outcome = 'success' if episode['success'] else 'failure'
    fig.suptitle(f'episode {episode["index"]} (seed {episode["seed"]}): {outcome}, '
                 f'{episode["steps"]} steps, error {episode["final_error_m"]:.3f} m', fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def draw_success(episodes: list[dict], png: Path) -> None:
    """Bar per episode: final error, coloured by success."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    colors = ['tab:green' if e['success'] else 'tab:red' for e in episodes]
    ax.bar(range(len(episodes)), [e['final_error_m'] for e in episodes], color=colors)
    ax.set_xticks(range(len(episodes)), [str(e['seed']) for e in episodes])
    ax.set_xlabel('episode seed')
    ax.set_ylabel('final error (m)')
    rate = sum(e['success'] for e in episodes) / len(episodes)
    ax.set_title(f'success {rate:.0%} (green = success)', fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'node':
        sys.exit(node_main(sys.argv[2:]))
    print('usage: python -m vit_perception.tools.demo node ... (internal); use '
          '`vit-perception demo`', file=sys.stderr)
    sys.exit(2)
