import json
import subprocess
import sys

import pytest

from vit_perception.tools import cli, node


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'vit_perception.tools.cli', *args],
                          capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    out = run_cli('--help')
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize('name', sorted(cli.COMMANDS))
def test_each_subcommand_has_help(name):
    out = run_cli(name, '--help')
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('usage: vit-perception ' + name)


def test_bad_flag_value_is_one_line_error_not_a_traceback():
    out = run_cli('node', '--backend', 'dds', '--set', 'control.rate=5')
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "vit-perception node: error: unknown config key 'control.rate' (known: "
        'control_rate_hz, ensemble_coeff, late_fusion_refresh)']


def test_missing_config_file_is_one_line_error(tmp_path):
    out = run_cli('node', '--backend', 'dds', '--config', str(tmp_path / 'nope.yaml'))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert 'config file not found' in out.stderr


def test_backend_auto_picks_dds_without_rclpy(monkeypatch):
    monkeypatch.setattr(node, 'importable', lambda module: False)
    assert node.select_backend('auto') == 'dds'
    monkeypatch.setattr(node, 'importable', lambda module: module == 'rclpy')
    assert node.select_backend('auto') == 'ros'
    assert node.select_backend('dds') == 'dds'


def test_bench_json_reports_both_pipelines_and_the_ratio(capsys):
    code = cli.main(['bench', '--size', 'tiny', '--iters', '2', '--warmup', '1', '--no-compile',
                     '--json',
                     '--image', '320x240', '--dtype', 'fp32'])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report['iters'] == 2 and report['image'] == '320x240 rgb8'
    assert set(report['naive_ms']) == {'preprocess', 'model', 'total'}
    assert set(report['engine_ms']) == {'decode', 'upload', 'preprocess', 'encode', 'fuse',
                                        'heads', 'total'}
    ratio = report['naive_ms']['total']['p50'] / report['engine_ms']['total']['p50']
    assert report['speedup_p50'] == pytest.approx(ratio)
    assert report['model_gflop'] > 1.0  # ViT-T/16 at 224: ~2.2 GFLOP
    assert report['matmul_peak_gflops']['fp32'] > 0


def test_bench_rejects_bad_image_size():
    out = run_cli('bench', '--image', '640by480')
    assert out.returncode == 2
    assert 'expected WIDTHxHEIGHT' in out.stderr


def test_sigterm_stops_a_command_like_ctrl_c_and_its_cleanup_runs(monkeypatch, capsys):
    """A SIGTERM (a launch file, systemd, `kill`) must not orphan what the command started."""
    import os
    import signal
    import time

    from vit_perception.tools import bench

    cleaned = []

    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # interrupted by the signal long before this ends
            return 1
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(bench, 'run', run)
    assert cli.main(['bench']) == 0  # not 1: the sleep was interrupted
    assert cleaned == [True]
    assert 'vit-perception bench: interrupted' in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # restored for the caller
