"""Action for "now" from recent action chunks: ACT temporal ensembling.

A chunk (H, A) conditioned on the observation at stamp s says: step i applies at s + i * dt.
At time `now` the step index of a chunk is round((now - s) / dt); a chunk covers `now` when
0 <= index < H. Every covering chunk votes with weight exp(-coeff * i), where i = 0 is the OLDEST
covering chunk (as in ACT, Zhao et al. 2023); coeff < 0 uses the newest chunk only.
Not thread-safe on its own: PerceptionCore serializes calls with its lock.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vit_perception.core.types import NS_PER_S


class ScheduledAction(NamedTuple):
    action: np.ndarray  # (A,) float64
    observation_stamp_ns: int  # the newest chunk that contributed
    num_chunks: int  # chunks ensembled


class ActionScheduler:
    """Keeps the chunks that still cover the present and blends them."""

    def __init__(self, dt: float, horizon: int, ensemble_coeff: float):
        if not dt > 0 or horizon < 1:
            raise ValueError(f'dt={dt}, horizon={horizon}: expected dt > 0 and horizon >= 1')
        self.dt_ns = int(round(dt * NS_PER_S))
        self.horizon = int(horizon)
        self.ensemble_coeff = float(ensemble_coeff)
        # (observation stamp, (H, A) chunk), oldest first
        self._chunks: list[tuple[int, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def newest_stamp_ns(self) -> int | None:
        return self._chunks[-1][0] if self._chunks else None

    def clear(self) -> None:
        self._chunks.clear()

    def step_index(self, stamp_ns: int, now_ns: int) -> int:
        """round((now - stamp) / dt) in integer arithmetic (halves round up)."""
        return (now_ns - stamp_ns + self.dt_ns // 2) // self.dt_ns

    def add_chunk(self, observation_stamp_ns: int, chunk: np.ndarray) -> None:
        """Store a copy of `chunk` (H, A); chunks that cannot cover its stamp any more go."""
        chunk = np.array(chunk, dtype=np.float64)  # copy: the caller's array is published as is
        if chunk.ndim != 2 or chunk.shape[0] != self.horizon:
            raise ValueError(f'chunk shape {chunk.shape}: expected ({self.horizon}, A)')
        if self._chunks and chunk.shape[1] != self._chunks[-1][1].shape[1]:
            raise ValueError(f'chunk shape {chunk.shape}: expected {self._chunks[-1][1].shape}')
        stamp = int(observation_stamp_ns)
        self._chunks.append((stamp, chunk))
        self._chunks.sort(key=lambda item: item[0])
        newest = self._chunks[-1][0]
        self._chunks = [(s, c) for s, c in self._chunks
                        if self.step_index(s, newest) < self.horizon]

    def refresh(self, stamp_ns: int, chunk: np.ndarray) -> bool:
        """Late fusion: replace the newest chunk's remaining steps with a refreshed `chunk`.

        `chunk` (H, A) was computed from the newest chunk's image tokens and a newer pose at
        `stamp_ns`; its step 0 applies at `stamp_ns`. Step k0 = round((stamp_ns - s) / dt) of the
        newest chunk (the one in effect at the pose time) becomes chunk[0], step k0 + j becomes
        chunk[j]; earlier steps and the chunk's stamp s are kept, so coverage does not grow.
        False (nothing changed) if there is no chunk, the pose is older than the newest chunk's
        observation, or the shape is wrong.
        """
        if not self._chunks:
            return False
        base_stamp, base = self._chunks[-1]
        chunk = np.asarray(chunk, dtype=np.float64)
        if stamp_ns < base_stamp or chunk.shape != base.shape:
            return False
        first = self.step_index(base_stamp, stamp_ns)
        if first >= self.horizon:
            return False
        updated = base.copy()
        updated[first:] = chunk[:self.horizon - first]  # (H - first, A)
        self._chunks[-1] = (base_stamp, updated)
        return True

    def action_at(self, now_ns: int) -> ScheduledAction | None:
        """Ensembled action for `now_ns`, or None if no chunk covers it."""
        self._chunks = [(s, c) for s, c in self._chunks
                        if self.step_index(s, now_ns) < self.horizon]
        covering = [(s, c[self.step_index(s, now_ns)]) for s, c in self._chunks
                    if self.step_index(s, now_ns) >= 0]
        if not covering:
            return None
        if self.ensemble_coeff < 0:
            covering = covering[-1:]
        steps = np.stack([step for _, step in covering])  # (K, A), oldest first
        weights = np.exp(-self.ensemble_coeff * np.arange(len(covering)))  # (K,)
        action = weights @ steps / weights.sum()  # (A,)
        return ScheduledAction(action, covering[-1][0], len(covering))
