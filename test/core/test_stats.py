"""DropCounter, LatencyStats, RateMeter, ThrottledLog: values, windows, thread safety."""

import threading

import pytest

from vit_perception.core.stats import DropCounter, LatencyStats, RateMeter, ThrottledLog

S = 1_000_000_000


def test_drop_counter_counts_by_reason():
    drops = DropCounter()
    drops.add('stale')
    drops.add('pose_skew', 3)
    drops.add('stale')
    assert drops.counts() == {'pose_skew': 3, 'stale': 2}
    assert list(drops.counts()) == ['pose_skew', 'stale']  # sorted
    assert drops.total() == 5
    drops.clear()
    assert drops.counts() == {} and drops.total() == 0


def test_drop_counter_is_exact_under_threads():
    drops = DropCounter()

    def work():
        for _ in range(2000):
            drops.add('x')

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert drops.counts() == {'x': 8000}


def test_latency_percentiles_match_numpy_linear():
    stats = LatencyStats(window=200)
    for v in range(1, 101):  # 1..100 ms
        stats.add('model', v)
    stats.add_all({'decode': 0.5})
    result = stats.percentiles()
    assert list(result) == ['decode', 'model']
    p50, p99 = result['model']
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(99.01)
    assert result['decode'] == (0.5, 0.5)


def test_latency_window_keeps_only_recent_samples():
    stats = LatencyStats(window=10)
    for _ in range(100):
        stats.add('model', 1000.0)
    for _ in range(10):
        stats.add('model', 2.0)
    assert stats.percentiles()['model'] == (2.0, 2.0)
    stats.clear()
    assert stats.percentiles() == {}


def test_rate_meter_steady_then_decays_then_zero():
    meter = RateMeter(window_s=5.0)
    assert meter.rate_hz(0) == 0.0
    for i in range(21):  # 10 Hz for 2 s: events at 0.0 .. 2.0 s
        meter.tick(i * S // 10)
    assert meter.rate_hz(2 * S) == pytest.approx(10.0)
    assert meter.rate_hz(3 * S) == pytest.approx(20 / 3)  # stopped: decays
    assert meter.rate_hz(8 * S) == 0.0  # window empty


def test_rate_meter_window_drops_old_events():
    meter = RateMeter(window_s=1.0)
    for i in range(10):  # 1 Hz for 10 s
        meter.tick(i * S)
    for i in range(11):  # then 10 Hz for 1 s
        meter.tick(10 * S + i * S // 10)
    assert meter.rate_hz(11 * S) == pytest.approx(10.0)


def test_throttled_log_one_line_per_key_per_period_with_suppressed_count():
    lines = []
    log = ThrottledLog(lambda level, text: lines.append((level, text)), period_s=5.0)
    assert log('stale', 'warn', 'a', 0) is True
    assert log('stale', 'warn', 'b', 1 * S) is False
    assert log('stale', 'warn', 'c', 2 * S) is False
    assert log('pose_skew', 'warn', 'other key', 3 * S) is True
    assert log('stale', 'warn', 'd', 5 * S) is True
    assert lines == [('warn', 'a'), ('warn', 'other key'), ('warn', 'd (2 similar suppressed)')]


def test_throttled_log_logs_after_clock_went_backwards():
    lines = []
    log = ThrottledLog(lambda level, text: lines.append(text), period_s=5.0)
    log('k', 'warn', 'first', 100 * S)
    assert log('k', 'warn', 'after jump', 1 * S) is True
    assert lines == ['first', 'after jump']


def test_bad_windows_are_rejected():
    with pytest.raises(ValueError):
        LatencyStats(window=0)
    with pytest.raises(ValueError):
        RateMeter(window_s=0)
