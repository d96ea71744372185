"""Action limits: the ONE place they are enforced (every driver publishes through this).

In order: non-finite -> rejected (None, never published); per-dimension clamp
(safety.action_min/max); workspace box for the named dimensions (absolute-target actions);
max change per dimension versus the previous published action (safety.max_step).
Each limit that changed an action counts once per action, by kind.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

from vit_perception.config import SafetyConfig
from vit_perception.errors import ConfigError

CLAMP_KINDS = ('nonfinite', 'action_range', 'workspace', 'max_step')


def _per_action(name: str, values: list[float], action_names: list[str]) -> np.ndarray | None:
    """Config list -> (A,) array, None when empty; ConfigError naming the field otherwise."""
    if not values:
        return None
    if len(values) != len(action_names):
        raise ConfigError(f'safety.{name} has {len(values)} values for {len(action_names)} '
                          f'actions ({", ".join(action_names)}): give one per action or none')
    return np.asarray(values, dtype=np.float64)


class ActionLimiter:
    """Clamps actions to the configured limits and counts what it changed."""

    def __init__(self, safety: SafetyConfig, action_names: list[str]):
        names = list(action_names)
        self.action_names = names
        self._min = _per_action('action_min', safety.action_min, names)
        self._max = _per_action('action_max', safety.action_max, names)
        self._max_step = _per_action('max_step', safety.max_step, names)
        unknown = [d for d in safety.workspace_dims if d not in names]
        if unknown:
            raise ConfigError(f'safety.workspace_dims {unknown} are not action names '
                              f'({", ".join(names)})')
        self._ws_index = np.array([names.index(d) for d in safety.workspace_dims], dtype=int)
        self._ws_min = np.asarray(safety.workspace_min, dtype=np.float64)
        self._ws_max = np.asarray(safety.workspace_max, dtype=np.float64)
        if np.any(self._ws_min > self._ws_max):
            raise ConfigError(f'safety.workspace_min={safety.workspace_min} exceeds '
                              f'workspace_max={safety.workspace_max}')
        self._lock = threading.Lock()
        self._previous: np.ndarray | None = None
        self._counts: Counter[str] = Counter()

    def apply(self, action: np.ndarray) -> np.ndarray | None:
        """The limited action (A,) float64, remembered as the previous one; None if non-finite."""
        action = np.array(action, dtype=np.float64).reshape(-1)
        if action.shape != (len(self.action_names),):
            raise ValueError(f'action has {action.size} values: expected '
                             f'{len(self.action_names)} ({", ".join(self.action_names)})')
        with self._lock:
            if not np.all(np.isfinite(action)):
                self._counts['nonfinite'] += 1
                return None
            if self._min is not None:
                action = self._clip(action, 'action_range', self._min, self._max)
            if self._ws_index.size:
                limited = action.copy()
                limited[self._ws_index] = self._clip(action[self._ws_index], 'workspace',
                                                     self._ws_min, self._ws_max)
                action = limited
            if self._max_step is not None and self._previous is not None:
                action = self._clip(action, 'max_step', self._previous - self._max_step,
                                    self._previous + self._max_step)
            self._previous = action
            return action.copy()

    def counts(self) -> dict[str, int]:
        """{kind: actions changed (or rejected) by that limit} for every kind."""
        with self._lock:
            return {kind: self._counts[kind] for kind in CLAMP_KINDS}

    def reset(self) -> None:
        """Forget the previous action (the next one is not step-limited)."""
        with self._lock:
            self._previous = None

    def _clip(self, values: np.ndarray, kind: str, low: np.ndarray, high: np.ndarray):
        clipped = np.clip(values, low, high)
        if np.any(clipped != values):
            self._counts[kind] += 1
        return clipped
