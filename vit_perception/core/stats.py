"""Cheap, thread-safe counters for diagnostics: drops by reason, latency percentiles, rates.

Every method takes the time as an argument (`now_ns`, integer nanoseconds of the node clock);
nothing here reads a clock, so replay with a bag clock stays deterministic.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable

import numpy as np

NS_PER_S = 1_000_000_000


class DropCounter:
    """Counts dropped inputs by reason ('stale', 'pose_skew', ...)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self._counts[reason] += count

    def counts(self) -> dict[str, int]:
        """A snapshot {reason: count}, sorted by reason."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


class LatencyStats:
    """Rolling window of the last `window` samples per stage; p50/p99 in milliseconds."""

    def __init__(self, window: int = 200):
        if window < 1:
            raise ValueError(f'window={window}: must be >= 1')
        self._window = window
        self._lock = threading.Lock()
        self._samples: dict[str, deque[float]] = {}

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            samples = self._samples.get(stage)
            if samples is None:
                samples = self._samples[stage] = deque(maxlen=self._window)
            samples.append(float(ms))

    def add_all(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.add(stage, ms)

    def percentiles(self) -> dict[str, tuple[float, float]]:
        """{stage: (p50_ms, p99_ms)} over each stage's window, sorted by stage."""
        with self._lock:
            snapshot = {stage: list(s) for stage, s in self._samples.items() if s}
        return {stage: (float(np.percentile(values, 50)), float(np.percentile(values, 99)))
                for stage, values in sorted(snapshot.items())}

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()


class RateMeter:
    """Event rate (Hz) over the last `window_s` seconds.

    rate = (n - 1) / (now - oldest event in the window): exact for a steady stream right after
    an event, and it decays towards 0 when events stop (then drops to 0 once the window is empty).
    """

    def __init__(self, window_s: float = 5.0):
        if not window_s > 0:
            raise ValueError(f'window_s={window_s}: must be > 0')
        self._window_ns = int(window_s * NS_PER_S)
        self._lock = threading.Lock()
        self._events: deque[int] = deque()

    def tick(self, now_ns: int) -> None:
        with self._lock:
            self._events.append(int(now_ns))
            self._prune(now_ns)

    def rate_hz(self, now_ns: int) -> float:
        with self._lock:
            self._prune(now_ns)
            if len(self._events) < 2:
                return 0.0
            span_ns = max(int(now_ns), self._events[-1]) - self._events[0]
            return (len(self._events) - 1) * NS_PER_S / span_ns if span_ns > 0 else 0.0

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def _prune(self, now_ns: int) -> None:
        while self._events and self._events[0] < now_ns - self._window_ns:
            self._events.popleft()


class ThrottledLog:
    """At most one log line per key per `period_s`; the next line says how many were suppressed.

    `log(level, text)` is the sink (e.g. Outputs.log).
    """

    def __init__(self, log: Callable[[str, str], None], period_s: float):
        self._log = log
        self._period_ns = int(period_s * NS_PER_S)
        self._lock = threading.Lock()
        self._last_ns: dict[str, int] = {}
        self._suppressed: Counter[str] = Counter()

    def __call__(self, key: str, level: str, text: str, now_ns: int) -> bool:
        """Log `text` unless `key` was logged less than `period_s` ago; True if it was logged."""
        with self._lock:
            last = self._last_ns.get(key)
            if last is not None and 0 <= now_ns - last < self._period_ns:
                self._suppressed[key] += 1
                return False
            self._last_ns[key] = now_ns
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            text = f'{text} ({suppressed} similar suppressed)'
        self._log(level, text)
        return True

    def clear(self) -> None:
        with self._lock:
            self._last_ns.clear()
            self._suppressed.clear()
