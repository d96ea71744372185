"""`vit-perception bench --live / --soak`: the statistics on synthetic data (exact values), and a
few-second smoke run of each mode through the real processes (report structure, sane values;
no timing thresholds)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from vit_perception.model.config import tiny_config
from vit_perception.tools import bench
from vit_perception.tools import live_bench as lb

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


def test_summarize_computes_latency_jitter_missed_ticks_drops_and_memory():
    # 100 Hz ticks: on time, one 2 ms late (its neighbours' periods are 12 and 8 ms), one missed.
    tick_ns = [T0 + k * 10 * MS for k in range(10)]
    tick_ns[3] += 2 * MS
    del tick_ns[7]  # a missing tick: one 20 ms period
    received = lb.Received(
        chunks=[(T0 + 40 * MS, T0), (T0 + 95 * MS, T0 + 33 * MS), (T0 + 900 * MS, T0)],
        actions=[(t + 1 * MS + (MS if k == 5 else 0), t, T0) for k, t in enumerate(tick_ns)],
        diagnostics=[(T0 + 500 * MS, 1, 'dropped', {
            'drops.superseded': '12', 'drops.stale': '1', 'control.tick_late_p99_ms': '0.250',
            'control.tick_overruns': '2', 'latency.total.p50_ms': '20.00', 'model_id': 'x'})])
    window = lb._Window(T0, T0 + 120 * MS, {'drops.superseded': '10', 'drops.stale': '1'})
    rss = [(0.0, 100 * 2**20), (1.0, 101 * 2**20), (2.0, 103 * 2**20)]
    out = lb.summarize(received, window, rate=100.0, rss=rss, rss_loaded=90 * 2**20)

    assert out['counts'] == {'chunks': 2, 'actions': 9, 'diagnostics': 1}  # 900 ms: outside
    assert out['latency_ms']['image_to_chunk'] == pytest.approx(
        {'n': 2, 'p50': 51.0, 'p99': 61.78, 'max': 62.0})
    stamps = out['tick']['jitter_from_stamps_ms']
    # periods 10, 10, 12, 8, 10, 10, 20, 10 ms -> |period - 10| = 0, 0, 2, 2, 0, 0, 10, 0
    assert (stamps['n'], stamps['p50'], stamps['max']) == (8, 0.0, 10.0)
    # receive periods 10, 10, 12, 8, 11, 9, 20, 10 ms (action 5 arrived 1 ms late)
    receive = out['tick']['jitter_from_receive_ms']
    assert receive['n'] == 8 and receive['p50'] == pytest.approx(1.0)
    assert receive['max'] == pytest.approx(10.0)
    assert out['tick']['missed_ticks'] == 1 and out['tick']['expected_ticks'] == 12
    assert out['tick']['node_tick_late_p99_ms'] == 0.25 and out['tick']['node_tick_overruns'] == 2
    assert out['drops'] == {'superseded': 2}  # only what happened inside the window
    assert out['drops_total_since_start'] == {'stale': 1, 'superseded': 12}
    assert out['rss_mb']['growth'] == 3.0 and out['rss_mb']['max'] == 103.0
    assert out['rss_mb']['slope_mb_per_min'] == pytest.approx(90.0)  # 1.5 MB/s
    assert out['rss_mb']['after_load'] == 90.0
    assert out['node_diagnostics'] == {'control.tick_late_p99_ms': '0.250',
                                       'control.tick_overruns': '2',
                                       'latency.total.p50_ms': '20.00'}


def test_summarize_of_an_empty_window_has_no_numbers_but_keeps_its_shape():
    out = lb.summarize(lb.Received(), lb._Window(T0, T0 + MS), 100.0, [(0.0, 2**20)], 2**20)
    assert out['latency_ms']['image_to_chunk'] == {'n': 0, 'p50': None, 'p99': None,
                                                   'max': None}
    assert out['tick']['jitter_from_stamps_ms']['n'] == 0 and out['tick']['missed_ticks'] == 0
    assert out['drops'] == {} and out['rss_mb']['growth'] == 0.0


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench')
    return {n: lb.save_random_checkpoint(root / f'tiny{n}', policy_config=tiny_config(
        cameras=[f'camera{i}' for i in range(n)])) for n in (1, 4)}


def check_report(report: dict, mode: str, cameras: int, rate: float) -> None:
    assert report['mode'] == mode and report['cameras'] == cameras
    assert report['control_rate_hz'] == rate and report['image'] == '64x48 rgb8'
    assert report['sent']['matched'] is True
    assert report['sent']['images'] > 0 and report['sent']['images'] % cameras == 0
    assert report['sent']['poses'] > report['sent']['images'] // cameras
    assert report['counts']['chunks'] > 0 and report['counts']['actions'] > 0
    assert report['counts']['diagnostics'] > 0
    latency = report['latency_ms']['image_to_chunk']
    assert latency['n'] == report['counts']['chunks']
    assert 0 < latency['p50'] <= latency['p99'] <= latency['max'] < math.inf
    for key in ('jitter_from_stamps_ms', 'jitter_from_receive_ms'):
        jitter = report['tick'][key]
        assert jitter['n'] == report['counts']['actions'] - 1
        assert 0 <= jitter['p50'] <= jitter['p99'] <= jitter['max'] < math.inf
    assert report['tick']['period_ms'] == pytest.approx(1e3 / rate)
    assert report['tick']['node_tick_late_p99_ms'] >= 0
    assert all(isinstance(n, int) and n > 0 for n in report['drops'].values())
    rss = report['rss_mb']
    assert len(rss['samples']) >= 2 and 0 < rss['start'] <= rss['max']
    assert rss['growth'] == pytest.approx(rss['end'] - rss['start'])
    assert any(k.startswith('latency.') for k in report['node_diagnostics'])
    assert report['node_exit_code'] == 0 and report['node_tracebacks'] == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_live_smoke_run(checkpoints, capsys):
    args = parse('--live', '--model', str(checkpoints[1]), '--duration', '3', '--rate', '50',
                 '--image', '64x48', '--device', 'cpu', '--dtype', 'fp32', '--json')
    assert bench.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    check_report(report, 'live', cameras=1, rate=50.0)
    text = lb.format_report(report)
    assert 'image-in -> chunk-out latency: p50' in text and 'tick period jitter' in text


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_soak_smoke_run(checkpoints, capsys):
    args = parse('--soak', '4', '--model', str(checkpoints[4]), '--rate', '100',
                 '--image', '64x48', '--device', 'cpu', '--dtype', 'fp32', '--json')
    assert bench.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    check_report(report, 'soak', cameras=4, rate=100.0)
    assert report['duration_s'] == 4.0 and report['warmup_s'] == 2.0
    text = lb.format_report(report)
    assert text.startswith('bench --soak: ') and '4 x 64x48 rgb8' in text


# ------------------------------------------------------------------------------------------
# --backend ros|dds: the figures from the rclpy peer's records
# ------------------------------------------------------------------------------------------

def test_summarize_peer_counts_chunks_per_image_action_gaps_latency_and_rx():
    start = T0
    images = [T0 + k * 33 * MS for k in range(4)]
    peer = {
        'start_ns': start, 'end_ns': T0 + 200 * MS, 'images': 4, 'poses': 20,
        'image_stamps': images,
        # image 1 twice (an embedding-less repeat counts once), image 3 never; one foreign stamp
        'chunks': [(images[0] + 20 * MS, images[0]), (images[1] + 30 * MS, images[1]),
                   (images[1] + 31 * MS, images[1]), (images[2] + 60 * MS, images[2]),
                   (T0 + 5 * MS, T0 - 10**9)],
        # actions every 20 ms from T0 + 30 ms, with a 100 ms hole after T0 + 70 ms
        'actions': [(T0 + t * MS, T0 + t * MS, images[0]) for t in (30, 50, 70, 170, 190)]
        + [(T0 - MS, T0 - MS, 0)],  # before the window
        'diagnostics': [(T0 + 150 * MS, 0, 'publishing actions',
                         {'rx./camera/image_raw': '4', 'rx./ee_pose': '19', 'drops.stale': '2',
                          'model_id': 'm'})],
    }
    out = lb.summarize_peer(peer, rate=50.0)
    assert out['images_to_chunks'] == 3 and out['sent'] == {'images': 4, 'poses': 20}
    assert out['actions'] == 5 and out['action_rate_hz'] == pytest.approx(25.0)
    assert out['first_action_after_s'] == pytest.approx(0.03)
    assert out['first_chunk_after_s'] == pytest.approx(0.02)
    # gaps 20, 20, 100, 20 and 10 ms to the end of publishing
    assert out['max_action_gap_ms'] == pytest.approx(100.0)
    assert out['action_gaps_over_100ms'] == 0
    latency = out['latency_ms']['image_to_chunk']
    assert latency['n'] == 4 and latency['max'] == pytest.approx(60.0)
    assert out['node_received'] == {'/camera/image_raw': 4, '/ee_pose': 19}
    assert out['drops_total'] == {'stale': 2}
    assert out['diagnostics_message_end'] == 'publishing actions'
    table = lb.format_peer_report({'machine': {'cpus': 2, 'load_avg': [1.0], 'ros_env': 'x'},
                                   'runs': [dict(out, backend='ros', node_cpu_s=1.5,
                                                 node_tracebacks=0, node_exit_code=0,
                                                 stalls_logged=0)]})
    assert '| images turned into chunks (of sent) | 3 of 4 |' in table
    assert '| node CPU-seconds | 1.5 |' in table


def test_backend_goes_with_live_only_and_needs_rclpy_somewhere(monkeypatch, tmp_path):
    from vit_perception.errors import ConfigError
    from vit_perception.tools import harness

    with pytest.raises(ConfigError, match='--backend goes with --live'):
        lb.run(parse('--soak', '5', '--backend', 'dds'))
    monkeypatch.delenv(harness.ROS_ENV_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match='check_ros_jazzy.sh --dir') as info:
        harness.RosEnvironment.find(tmp_path / 'nothing_here')
    assert '\n' not in str(info.value)


def test_children_take_sigint_even_when_started_from_a_background_job():
    """A shell starts `cmd &` with SIGINT ignored; the harness stops its children with SIGINT."""
    import signal
    import sys

    from vit_perception.tools.harness import NodeProcess

    probe = 'import signal, sys; sys.stderr.write(repr(signal.getsignal(signal.SIGINT)))'
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
    try:
        with NodeProcess(None, 0, argv=[sys.executable, '-c', probe], ready='') as child:
            child.proc.wait(timeout=60)
            assert 'default_int_handler' in child.stderr()  # not <Handlers.SIG_IGN: 1>
    finally:
        signal.signal(signal.SIGINT, previous)
