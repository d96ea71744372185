"""`vit-perception demo`: camera projection for the report, the node's wall-latency probe, the
shipped checkpoint, and (slow) the whole demo: sim and node as separate DDS processes."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from vit_perception.core.engine import DEFAULT_CHECKPOINT
from vit_perception.core.types import ActionChunkResult, ImageFrame
from vit_perception.model.checkpoint import load_checkpoint, save_checkpoint
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy
from vit_perception.tools import cli, demo, train
from vit_perception.tools.harness import interruptible_child
from vit_perception.tools.sim.scene import ReachEnv


def test_projection_puts_the_puck_where_the_camera_sees_it():
    with ReachEnv(0, image_size=96) as env:
        for seed in (0, 1, 2):
            env.reset(seed)
            image = env.render('scene').astype(int)
            u, v = demo.project(env.target_position()[None], 96)[0]
            r, g, b = image[int(round(v)), int(round(u))]
            assert r > 120 and r > g + 60 and r > b + 60, (seed, u, v, (r, g, b))  # red puck
            tcp = env.ee_pose()[0]
            u2, v2 = demo.project(tcp[None], 96)[0]
            assert abs(u2 - u) + abs(v2 - v) > 3  # a different place in the image


class FakeOutputs:
    def __init__(self):
        self.sent = []

    def publish_chunk(self, result):
        self.sent.append(('chunk', result.observation_stamp_ns))

    def publish_action(self, stamp_ns, action, observation_stamp_ns):
        self.sent.append(('action', observation_stamp_ns))


class FakeCore:
    def __init__(self):
        self.outputs = FakeOutputs()
        self.images = []

    def on_image(self, frame):
        self.images.append(frame.stamp_ns)


def test_wall_latency_pairs_images_with_their_chunk_and_first_action():
    core = FakeCore()
    probe = demo.WallLatency()
    probe.attach(core)
    frame = ImageFrame(stamp_ns=100, frame_id='c', data=b'')
    core.on_image(frame)
    core.on_image(ImageFrame(stamp_ns=200, frame_id='c', data=b''))
    result = ActionChunkResult(100, np.zeros(2), np.zeros((1, 1)))
    core.outputs.publish_chunk(result)
    core.outputs.publish_action(150, np.zeros(1), 100)
    core.outputs.publish_action(170, np.zeros(1), 100)  # same observation: not counted again
    core.outputs.publish_action(250, np.zeros(1), 200)
    summary = probe.summary()
    assert core.images == [100, 200]
    assert core.outputs.sent == [('chunk', 100), ('action', 100), ('action', 100),
                                 ('action', 200)]
    assert summary['image_to_chunk_ms']['count'] == 1
    assert summary['image_to_action_ms']['count'] == 2
    assert summary['image_to_action_ms']['p50'] >= 0


@pytest.mark.parametrize('argv', [
    ['demo'],
    ['demo', '--task', 'aloha-transfer-cube', '--episodes', '3', '--seed', '7', '--pictures', '2',
     '--network', 'default', '--model', 'my ckpt', '--set', 'control.ensemble_coeff=0.1']])
def test_report_header_names_the_run_and_the_command_that_reruns_it(argv):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    args.image_size = 180 if args.task == 'aloha-transfer-cube' else 96  # as demo.run fills it
    lines = demo.report_header('title', Path('/ck'), 3, args, 42, 12.4)
    assert lines[0] == '# title'
    assert lines[2] == (f'Checkpoint `/ck`, 3 episodes from seed {args.seed}, sim and node as '
                        'separate processes over Cyclone DDS (ROS 2 wire), domain 42, '
                        f'{args.network} network, lock-step on sim time; 12 s wall.')
    command = lines[4].removeprefix('Command: `').removesuffix('`')
    words = shlex.split(command)
    assert words[:2] == ['vit-perception', 'demo']
    rerun = parser.parse_args(words[1:])
    assert vars(rerun) == vars(args)  # every flag, image size included


def test_latency_summary_reads_node_stats():
    stats = {'image_to_chunk_ms': {'count': 9, 'p50': 12.34, 'p99': 40.0},
             'image_to_action_ms': {'count': 9, 'p50': 30.06, 'p99': 51.0}}
    assert demo.latency_summary(stats, Path('r/report.md')) == (
        'latency image->chunk p50 12.3 ms p99 40.0 ms, image->action p50 30.1 ms; '
        'report: r/report.md')
    assert demo.latency_summary({}, Path('x')).startswith('latency image->chunk p50 nan ms')


def test_the_shipped_checkpoint_is_small_and_loads():
    files = list(DEFAULT_CHECKPOINT.iterdir())
    assert sum(f.stat().st_size for f in files) <= 2 * 1024 * 1024
    assert not (DEFAULT_CHECKPOINT / train.OPTIMIZER_STATE).exists()
    policy, info = load_checkpoint(DEFAULT_CHECKPOINT)
    assert policy.config.cameras == ['camera'] and policy.config.fusion.mode == 'early'
    assert policy.config.backbone.hidden_size == train.DEFAULT_POLICY['backbone']['hidden_size']
    assert info['ablate_images'] is False and info['episodes'] == train.DEMO_EPISODES
    assert info['val_mae'][0] < 0.5 * info['val_baseline_mae'][0]  # dx: far below a constant


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_runs_sim_and_node_as_processes_and_writes_a_report(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    policy = build_policy(config)
    policy.set_normalization({'pose_mean': [0.4, 0.0, 0.2] + [0.0] * 6, 'pose_std': [0.1] * 9,
                              'action_mean': [0.0] * 7, 'action_std': [0.05] * 7})
    save_checkpoint(policy, tmp_path / 'ckpt', extra={'ablate_images': False})
    before = _descendants()
    report = tmp_path / 'report'
    out = subprocess.run(
        [sys.executable, '-m', 'vit_perception.tools.cli', 'demo', '--episodes', '1',
         '--max-steps', '4', '--image-size', '48', '--model', str(tmp_path / 'ckpt'),
         '--report', str(report), '--set', 'engine.warmup_iters=0'],
        capture_output=True, text=True, timeout=220)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'success 0/1' in out.stdout
    sim = json.loads((report / 'sim.json').read_text())
    assert [e['steps'] for e in sim['episodes']] == [4]
    assert sim['episodes'][0]['missed_actions'] == 0
    stats = json.loads((report / 'node_stats.json').read_text())
    assert stats['image_to_chunk_ms']['count'] >= 4
    assert stats['image_to_action_ms']['count'] >= 4
    text = (report / 'report.md').read_text()
    assert '**Success: 0/1 (0%)**' in text and '| 0 | 1000 | no | 4 |' in text
    assert ('Command: `vit-perception demo --task reach --episodes 1 --seed 1000 --image-size 48 '
            f'--max-steps 4 --model {tmp_path / "ckpt"} --set engine.warmup_iters=0`') in text
    for name in ('episode_00.png', 'success.png', 'sim.log', 'node.log'):
        assert (report / name).stat().st_size > 0
    assert (report / 'bags' / 'episode_0000' / 'metadata.yaml').is_file()
    time.sleep(0.5)
    assert _descendants() - before == set()  # no child left behind


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ctrl_c_stops_both_children(tmp_path):
    torch.manual_seed(0)
    policy = build_policy(tiny_config())
    save_checkpoint(policy, tmp_path / 'ckpt', extra={})
    proc = subprocess.Popen(
        [sys.executable, '-m', 'vit_perception.tools.cli', 'demo', '--episodes', '50',
         '--image-size', '48', '--model', str(tmp_path / 'ckpt'), '--report',
         str(tmp_path / 'report')], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible_child)  # Ctrl-C acts even when the suite runs as a background job
    try:
        deadline = time.monotonic() + 180
        log = Path(tmp_path / 'report' / 'sim.log')
        while time.monotonic() < deadline:  # wait until episodes are running
            if log.is_file() and 'episode 0 (seed 1000): start' in log.read_text():
                break
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2
        proc.send_signal(2)  # SIGINT, as Ctrl-C does to the parent
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and 'interrupted' in err
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
