"""`vit-perception bench`: every backend side by side, --load busy loops, peaks and targets."""

import json
import os

import psutil
import pytest
import torch

from vit_perception.core import priority, runtimes
from vit_perception.model.checkpoint import save_checkpoint
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy
from vit_perception.tools import bench, cli


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_policy(tiny_config(fusion__mode='late')).eval(),
                           tmp_path_factory.mktemp('bench') / 'tiny')


def children() -> list:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


def test_bench_compares_every_backend_quiet_and_under_load(checkpoint, tmp_path, capsys):
    before = {p.pid for p in children()}
    code = cli.main(['bench', '--model', str(checkpoint), '--iters', '3', '--warmup', '1',
                     '--no-compile', '--dtype', 'fp32', '--device', 'cpu', '--image', '64x48',
                     '--load', '1', '--cache-dir', str(tmp_path), '--json'])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    names = ['naive', 'torch', *runtimes.installed_runtimes()]
    assert list(report['contenders']) == names and report['load'] == 1
    assert report['nice'] == report['load_nice'] == priority.current_nice()  # no --nice
    peak = report['matmul_peak_gflops']
    assert set(peak) == {'fp32', 'bf16'} and min(peak.values()) > 0
    for c in report['contenders'].values():
        assert c['precision'] == 'fp32'
        assert 0 < c['model_ms']['p50'] <= c['total_ms']['p50'] * 1.000001
        assert c['end_to_end_over_model'] == pytest.approx(c['total_ms']['p50']
                                                           / c['model_ms']['p50'])
        assert c['gflops'] == pytest.approx(report['model_gflop'] / (c['model_ms']['p50'] / 1e3))
        assert c['percent_of_peak'] == pytest.approx(100 * c['gflops'] / peak['fp32'])
        assert c['loaded_total_ms']['p50'] <= c['loaded_total_ms']['p99']
    for name in names[1:]:  # every backend computes what the torch engine computes
        assert report['contenders'][name]['chunk_max_abs_diff_vs_torch'] < 1e-5
        assert c['loaded_p99_over_quiet_p50'] == pytest.approx(c['loaded_total_ms']['p99']
                                                               / c['total_ms']['p50'])
    engines = names[1:]
    chosen = min(engines, key=lambda n: report['contenders'][n]['total_ms']['p99'])
    assert report['targets']['chosen'] == chosen
    assert 'loaded_p99_over_quiet_p50' in report['targets']
    assert report['speedup_p50'] == pytest.approx(
        report['naive_ms']['total']['p50'] / report['engine_ms']['total']['p50'])
    assert {p.pid for p in children()} == before  # the busy loops are gone
    text = bench.format_report(report)
    assert all(name in text for name in names) and 'p99/quiet p50' in text



def test_bench_compares_thread_counts_in_one_run(checkpoint, tmp_path, capsys):
    code = cli.main(['bench', '--model', str(checkpoint), '--iters', '2', '--warmup', '1',
                     '--no-compile', '--dtype', 'fp32', '--device', 'cpu', '--image', '64x48',
                     '--backends', 'torch', '--threads', '0,1', '--cache-dir', str(tmp_path),
                     '--json'])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report['contenders']) == ['naive', 'torch@default', 'torch@1']
    assert report['threads'] == [0, 1] and report['torch_threads'] == torch.get_num_threads()
    assert report['contenders']['torch@1']['chunk_max_abs_diff_vs_torch'] < 1e-5
    assert {k: v['chosen'] for k, v in report['targets_by_threads'].items()} == {
        '0': 'torch@default', '1': 'torch@1'}
    assert report['targets'] == report['targets_by_threads']['0']
    text = bench.format_report(report)
    assert 'torch@1' in text and '(lowest quiet p99 (threads 1)' in text


@pytest.mark.parametrize('bad', ['one', '1,1', '-1'])
def test_bad_thread_list_is_one_line(bad, capsys):
    assert cli.main(['bench', '--threads', bad, '--iters', '1']) == 2
    err = capsys.readouterr().err
    assert '--threads' in err and len(err.strip().splitlines()) == 1

def test_busy_loops_stop_when_the_bench_fails():
    with pytest.raises(RuntimeError), bench.busy_load(2, seconds=600) as procs:
        assert [p.poll() for p in procs] == [None, None]  # spinning
        raise RuntimeError('bench failed')
    assert all(p.returncode is not None for p in procs)


def test_busy_loops_run_at_the_nice_value_asked():
    raised = min(priority.current_nice() + 2, 19)  # a higher value needs no privilege
    with bench.busy_load(1, seconds=60, nice=raised) as procs:
        assert os.getpriority(os.PRIO_PROCESS, procs[0].pid) == raised


def test_bench_nice_applies_to_the_contenders_not_the_busy_loops(checkpoint, tmp_path, capsys,
                                                                 monkeypatch):
    start = priority.current_nice()
    state = {'nice': start}  # the process's nice, faked: lowering it needs a privilege
    monkeypatch.setattr(priority, 'current_nice', lambda: state['nice'])
    monkeypatch.setattr(priority, 'set_nice', lambda nice, name: state.update(nice=nice))
    load_nices, busy_load = [], bench.busy_load

    def spy(processes, seconds, nice=None):
        load_nices.append(nice)
        return busy_load(processes, seconds, nice)

    monkeypatch.setattr(bench, 'busy_load', spy)
    code = cli.main(['bench', '--model', str(checkpoint), '--iters', '2', '--warmup', '1',
                     '--no-compile', '--dtype', 'fp32', '--device', 'cpu', '--image', '64x48',
                     '--backends', 'torch', '--load', '1', '--nice', '-4',
                     '--cache-dir', str(tmp_path), '--json'])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report['nice'] == -4 and report['load_nice'] == start and load_nices == [start]
    assert f', nice -4 (busy loops: {start})' in bench.format_report(report)


@pytest.mark.parametrize('args', [['--nice', '1'], ['--nice', '-21'],
                                  ['--live', '--nice', '-5']])
def test_bad_nice_is_one_line(args, capsys):
    assert cli.main(['bench', '--iters', '1', *args]) == 2
    err = capsys.readouterr().err
    assert '--nice' in err and len(err.strip().splitlines()) == 1


def test_busy_loops_end_by_themselves_after_their_bound():
    with bench.busy_load(1, seconds=1) as procs:
        assert procs[0].wait(timeout=60) == 0  # the deadline ended it, not the bench


def test_target_lines_say_met_or_not_from_the_numbers():
    targets = {'chosen': 'openvino', 'fastest_peer': 'torch',
               'chosen_p50_over_fastest_peer_p50': 0.9, 'chosen_percent_of_bf16_peak': 70.0,
               'chosen_percent_of_own_peak': 70.0, 'native_bf16': True,
               'loaded_p99_over_quiet_p50': 3.5, 'end_to_end_over_model': 1.05}
    text = '\n'.join(bench._target_lines(targets))
    assert '0.90x (target <= 1: met)' in text
    assert '70 % (target >= 75 %: NOT met)' in text
    assert '3.50x (target <= 3: NOT met)' in text
    assert '1.050x (target <= 1.15: met)' in text
    no_bf16 = '\n'.join(bench._target_lines({**targets, 'native_bf16': False,
                                             'chosen_percent_of_bf16_peak': None}))
    assert 'no native bf16' in no_bf16 and 'target >= 75' not in no_bf16


def test_targets_give_no_bf16_percentage_against_an_emulated_bf16_peak():
    def contender(p50, p99, gflops):
        return {'total_ms': {'p50': p50, 'p99': p99}, 'gflops': gflops,
                'percent_of_peak': 50.0, 'end_to_end_over_model': 1.02}

    contenders = {'torch': contender(120.0, 170.0, 70.0),
                  'openvino': contender(80.0, 110.0, 105.0)}
    peak = {'fp32': 140.0, 'bf16': 0.9}
    native = bench._targets(contenders, ['torch', 'openvino'], peak, native_bf16=True)
    assert native['chosen'] == 'openvino' and native['fastest_peer'] == 'torch'
    assert native['chosen_percent_of_bf16_peak'] == pytest.approx(100 * 105.0 / 0.9)
    assert native['chosen_p50_over_fastest_peer_p50'] == pytest.approx(80.0 / 120.0)
    emulated = bench._targets(contenders, ['torch', 'openvino'], peak, native_bf16=False)
    assert emulated['chosen_percent_of_bf16_peak'] is None


def test_unknown_backend_is_one_line(capsys):
    assert cli.main(['bench', '--backends', 'torch,tensorrt', '--size', 'tiny']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tensorrt'" in err[0]


def test_random_init_is_the_same_every_run_so_the_onnx_cache_is_reused():
    from vit_perception.model.onnx_graphs import content_hash

    torch.manual_seed(5)
    first = bench.load_policy('', 'tiny', 'early', 1)
    after_first = torch.rand(3)
    torch.manual_seed(5)
    second = bench.load_policy('', 'tiny', 'early', 1)
    assert torch.equal(torch.rand(3), after_first)  # the caller's random stream is untouched
    assert content_hash(first, 'fp32') == content_hash(second, 'fp32')
    assert next(first.parameters()).abs().sum() > 0


def test_matmul_peak_is_the_fastest_timed_call(monkeypatch):
    durations = iter([9.0, 0.5, 0.25, 0.5])  # s per call; the first call is untimed
    clock = {'now': 0.0, 'start': True}

    def fake_perf_counter():
        if not clock['start']:
            clock['now'] += next(durations)
        clock['start'] = not clock['start']
        return clock['now']

    monkeypatch.setattr(bench.time, 'perf_counter', fake_perf_counter)
    gflops = bench._matmul_gflops(torch.device('cpu'), torch.float32, repeats=3)
    assert gflops == pytest.approx(2 * 1024 ** 3 / 0.25 / 1e9)


def test_matmul_peaks_use_every_core_and_one_call_for_emulated_bf16(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, '_matmul_gflops',
                        lambda device, dtype, repeats: calls.append((dtype, repeats)) or 1.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        peaks = bench._matmul_peaks(torch.device('cpu'), torch.float32, False, threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert set(peaks) == {'fp32', 'bf16'}
    assert calls == [(torch.float32, 10), (torch.bfloat16, 1)]
    calls.clear()
    bench._matmul_peaks(torch.device('cpu'), torch.float16, True, threads=before)
    assert calls == [(torch.float32, 10), (torch.bfloat16, 10), (torch.float16, 10)]
