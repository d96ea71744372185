"""Replay evaluation: what a replay recorded -> metrics.json, PNG plots and report.md.

Action errors compare the model with a recorded action (expert / teleop) in the bag:
- tick actions: the action published at control tick t vs the recorded action in effect at t
  (the newest recorded action stamped <= t);
- chunk steps: step h of the chunk conditioned on the observation at s applies at s + h * dt and
  is compared with the recorded action in effect then;
- baseline: the mean recorded action over the whole bag, held constant (an oracle constant; a
  model that does not beat it has not learned anything state-dependent).
Times outside [first recorded stamp, last + 2 x median spacing] and inside gaps longer than that
are not scored. Recorded messages map onto the model's action names (see `recorded_action`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NS_PER_S = 1_000_000_000

# geometry_msgs/TwistStamped (teleop / velocity commands): model action name -> field path.
TWIST_FIELDS = {
    'dx': 'linear.x', 'dy': 'linear.y', 'dz': 'linear.z',
    'vx': 'linear.x', 'vy': 'linear.y', 'vz': 'linear.z',
    'drx': 'angular.x', 'dry': 'angular.y', 'drz': 'angular.z',
    'wx': 'angular.x', 'wy': 'angular.y', 'wz': 'angular.z',
}
# geometry_msgs/PoseStamped (absolute targets): model action name -> field path.
POSE_FIELDS = {
    'x': 'pose.position.x', 'y': 'pose.position.y', 'z': 'pose.position.z',
    'qx': 'pose.orientation.x', 'qy': 'pose.orientation.y', 'qz': 'pose.orientation.z',
    'qw': 'pose.orientation.w',
}
ACTION_TYPES = ('vit_perception/msg/ActionChunk', 'geometry_msgs/msg/TwistStamped',
                'geometry_msgs/msg/PoseStamped')


def recorded_action(msg, msgtype: str, names: list[str], log_time_ns: int
                    ) -> tuple[int, np.ndarray] | None:
    """A recorded action message -> (stamp_ns, (A,) float64 in the model's action order).

    vit_perception/ActionChunk: step 0 (at header.stamp), matched by dimension name.
    TwistStamped: linear.xyz -> dx dy dz (or vx vy vz), angular.xyz -> drx dry drz (or wx wy wz).
    PoseStamped: position -> x y z, orientation -> qx qy qz qw.
    Dimensions the message does not carry are NaN (not scored). Stamp 0 -> the log time.
    None for a malformed message (ActionChunk whose data does not match its names).
    """
    stamp = int(msg.header.stamp.sec) * NS_PER_S + int(msg.header.stamp.nanosec)
    stamp = stamp or int(log_time_ns)
    values = np.full(len(names), np.nan)
    if msgtype == ACTION_TYPES[0]:
        width = len(msg.names)
        data = np.asarray(msg.data, dtype=np.float64)
        if width == 0 or data.size < width:
            return None
        step0 = dict(zip(msg.names, data[:width]))
        for i, name in enumerate(names):
            values[i] = step0.get(name, np.nan)
    else:
        table = TWIST_FIELDS if msgtype == ACTION_TYPES[1] else POSE_FIELDS
        root = msg if msgtype == ACTION_TYPES[2] else msg.twist
        for i, name in enumerate(names):
            path = table.get(name)
            if path is not None:
                obj = root
                for part in path.split('.'):
                    obj = getattr(obj, part)
                values[i] = float(obj)
    return stamp, values


@dataclass
class ReplayRecord:
    """Everything a replay saw and produced that the metrics need (bag-clock times in ns)."""

    action_names: list[str]
    dt: float
    horizon: int
    bag: str = ''
    model: str = ''
    fusion: str = ''
    status: str = 'complete'  # 'complete' | 'interrupted' | 'error: ...'
    # control ticks: every tick, and the published ones with their action + observation stamp
    ticks: int = 0
    tick_times: list[int] = field(default_factory=list)
    tick_actions: list[np.ndarray] = field(default_factory=list)
    tick_obs_stamps: list[int] = field(default_factory=list)
    # chunks: (observation stamp, bag time it was computed, (H, A) chunk)
    chunks: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)  # per inference, wall ms
    recorded: list[tuple[int, np.ndarray]] = field(default_factory=list)
    recorded_source: str = ''  # 'topic (type)' or why there is none
    image_delays: list[tuple[int, int]] = field(default_factory=list)  # (log time, log - stamp)
    pose_skews: list[int] = field(default_factory=list)  # per observation
    events: dict[str, int] = field(default_factory=dict)  # messages read by kind
    drops: dict[str, int] = field(default_factory=dict)
    diagnostics: dict[str, int] = field(default_factory=dict)  # reports by level name
    logs: list[str] = field(default_factory=list)
    first_ns: int | None = None  # first / last bag time processed
    last_ns: int | None = None
    wall_s: dict[str, float] = field(default_factory=dict)  # 'total', 'engine', 'read', ...
    engine_calls: dict[str, int] = field(default_factory=dict)
    # gaps in the bag clock skipped without ticking: (from, to, control ticks skipped)
    gaps: list[tuple[int, int, int]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

class _Lookup:
    """The recorded action in effect at given times (newest recorded stamp <= t)."""

    def __init__(self, recorded: list[tuple[int, np.ndarray]], width: int):
        recorded = sorted(recorded, key=lambda item: item[0])
        self.times = np.array([t for t, _ in recorded], dtype=np.int64)
        self.values = (np.stack([v for _, v in recorded]) if recorded
                       else np.zeros((0, width)))  # (N, A)
        spacing = np.diff(self.times)
        self.max_gap = int(2 * np.median(spacing)) if spacing.size else 0

    def __call__(self, times: np.ndarray) -> np.ndarray:
        """(T,) ns -> (T, A) recorded values, NaN where nothing is in effect."""
        times = np.asarray(times, dtype=np.int64)
        out = np.full((times.size, self.values.shape[1]), np.nan)
        if not self.times.size:
            return out
        idx = np.searchsorted(self.times, times, side='right') - 1  # (T,)
        ok = idx >= 0
        ok[ok] &= times[ok] - self.times[idx[ok]] <= self.max_gap
        out[ok] = self.values[idx[ok]]
        return out


def _errors(pred: np.ndarray, ref: np.ndarray, names: list[str]) -> dict:
    """Per-dimension and mean MAE / RMSE over rows where both are finite."""
    diff = pred - ref  # (T, A)
    per_dim = {}
    for i, name in enumerate(names):
        d = diff[:, i][np.isfinite(diff[:, i])]
        per_dim[name] = ({'mae': float(np.abs(d).mean()), 'rmse': float(np.sqrt((d ** 2).mean())),
                          'n': int(d.size)} if d.size else None)
    scored = [v for v in per_dim.values() if v]
    return {
        'per_dim': per_dim,
        'mae': float(np.mean([v['mae'] for v in scored])) if scored else None,
        'rmse': float(np.mean([v['rmse'] for v in scored])) if scored else None,
        'n': max((v['n'] for v in scored), default=0),
    }


def _summary(values, scale: float = 1.0) -> dict | None:
    values = np.asarray(values, dtype=np.float64) * scale
    if not values.size:
        return None
    return {'mean': float(values.mean()), 'p50': float(np.percentile(values, 50)),
            'p90': float(np.percentile(values, 90)), 'p99': float(np.percentile(values, 99)),
            'max': float(values.max()), 'n': int(values.size)}


def action_errors(record: ReplayRecord) -> dict:
    """Tick, per-horizon-step and constant-baseline errors vs the recorded action."""
    names = record.action_names
    if not record.recorded:
        return {'available': False, 'reason': record.recorded_source or 'no recorded action'}
    lookup = _Lookup(record.recorded, len(names))
    result = {'available': True, 'source': record.recorded_source,
              'recorded_messages': len(record.recorded),
              'scored_dims': [n for i, n in enumerate(names)
                              if np.isfinite(lookup.values[:, i]).any()]}
    finite = np.isfinite(lookup.values)  # (N, A)
    counts = finite.sum(axis=0)
    mean = np.where(counts > 0, np.where(finite, lookup.values, 0.0).sum(axis=0)
                    / np.maximum(counts, 1), np.nan)  # (A,) per-dim mean, NaN if never recorded
    result['baseline_action'] = {n: _finite(v) for n, v in zip(names, mean)}
    if record.tick_times:
        ref = lookup(np.array(record.tick_times))  # (T, A)
        pred = np.stack(record.tick_actions).astype(np.float64)  # (T, A)
        result['tick'] = _errors(pred, ref, names)
        result['baseline'] = _errors(np.broadcast_to(mean, ref.shape), ref, names)
    if record.chunks:
        dt_ns = int(round(record.dt * NS_PER_S))
        stamps = np.array([s for s, _, _ in record.chunks], dtype=np.int64)  # (C,)
        chunks = np.stack([c for _, _, c in record.chunks]).astype(np.float64)  # (C, H, A)
        horizon = []
        for h in range(chunks.shape[1]):
            ref = lookup(stamps + h * dt_ns)  # (C, A)
            horizon.append(_errors(chunks[:, h], ref, names))
        result['horizon'] = horizon
        result['horizon_mae'] = [h['mae'] for h in horizon]
        result['horizon_rmse'] = [h['rmse'] for h in horizon]
    return result


def compute_metrics(record: ReplayRecord) -> dict:
    """The metrics.json content (wall-clock figures only under 'latency_ms' and 'throughput')."""
    duration = ((record.last_ns - record.first_ns) / NS_PER_S
                if record.first_ns is not None else 0.0)
    wall = record.wall_s
    total = wall.get('total', 0.0)
    engine = wall.get('engine', 0.0)
    inferences = len(record.chunks)
    stages = sorted({k for t in record.timings for k in t})
    ages = [(t - s) for t, s in zip(record.tick_times, record.tick_obs_stamps)]
    return {
        'status': record.status,
        'bag': record.bag,
        'model': record.model,
        'fusion': record.fusion,
        'action_names': list(record.action_names),
        'dt': record.dt,
        'horizon': record.horizon,
        'bag_duration_s': duration,
        'counts': {
            'messages': dict(sorted(record.events.items())),
            'inferences': inferences,
            'ticks': record.ticks,
            'actions': len(record.tick_times),
            'ticks_without_action': record.ticks - len(record.tick_times),
        },
        'clock_gaps': {
            'count': len(record.gaps),
            'skipped_ticks': sum(n for *_, n in record.gaps),
            'longest_s': max(((b - a) / 1e9 for a, b, _ in record.gaps), default=0.0),
        },
        'drops': dict(sorted(record.drops.items())),
        'diagnostics': dict(sorted(record.diagnostics.items())),
        'actions': action_errors(record),
        'input_age_ms': {
            'image_receive_delay': _summary([d for _, d in record.image_delays], 1e-6),
            'pose_skew': _summary(record.pose_skews, 1e-6),
            'observation_age_at_tick': _summary(ages, 1e-6),
        },
        'latency_ms': {stage: _summary([t[stage] for t in record.timings if stage in t])
                       for stage in stages},
        'throughput': {
            'wall_s': wall,
            'engine_calls': record.engine_calls,
            'real_time_factor': duration / total if total > 0 else None,
            'inferences_per_s': inferences / total if total > 0 else None,
            'engine_only_inferences_per_s': (record.engine_calls.get('infer', 0) / engine
                                             if engine > 0 else None),
            'replay_vs_engine_only': engine / total if total > 0 else None,
            'overhead_fraction': 1.0 - engine / total if total > 0 else None,
        },
        'log': record.logs[-50:],
    }


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _clean(obj):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return _finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_metrics(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(_clean(metrics), indent=2, allow_nan=False) + '\n')


# ---------------------------------------------------------------------------------------------
# Plots and report.md
# ---------------------------------------------------------------------------------------------

PLOTS = ('actions.png', 'horizon_error.png', 'latency.png', 'input_age.png')


def write_report(directory: str | Path, record: ReplayRecord, metrics: dict) -> Path:
    """metrics.json, the PNG plots and report.md into `directory` (created); -> report.md."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_metrics(directory / 'metrics.json', metrics)
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    origin = record.first_ns or 0
    plot_actions(plt, directory / PLOTS[0], record, origin)
    plot_horizon(plt, directory / PLOTS[1], metrics)
    plot_latency(plt, directory / PLOTS[2], record)
    plot_input_age(plt, directory / PLOTS[3], record, origin)
    report = directory / 'report.md'
    report.write_text(report_markdown(metrics))
    return report


def plot_actions(plt, path: Path, record: ReplayRecord, origin: int) -> None:
    names = record.action_names
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.6 * len(names) + 0.6), sharex=True,
                             squeeze=False)
    rec = sorted(record.recorded, key=lambda item: item[0])
    for i, (ax, name) in enumerate(zip(axes[:, 0], names)):
        if rec:
            t = [(s - origin) / NS_PER_S for s, _ in rec]
            ax.step(t, [v[i] for _, v in rec], where='post', color='0.3', lw=1.2,
                    label='recorded')
        if record.tick_times:
            t = [(s - origin) / NS_PER_S for s in record.tick_times]
            ax.plot(t, [a[i] for a in record.tick_actions], '.', ms=2, color='tab:blue',
                    label='predicted (tick)')
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc='upper right', fontsize=8)
    axes[-1, 0].set_xlabel('bag time (s)')
    fig.suptitle('predicted vs recorded action')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_horizon(plt, path: Path, metrics: dict) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    actions = metrics['actions']
    if actions.get('horizon'):
        steps = np.arange(len(actions['horizon']))
        for name in actions['scored_dims']:
            ax.plot(steps, [_dim(h, name) for h in actions['horizon']], lw=0.8, alpha=0.6,
                    label=name)
        ax.plot(steps, [_nan(v) for v in actions['horizon_mae']], 'k-o', lw=2, label='mean')
        if actions.get('baseline', {}).get('mae') is not None:
            ax.axhline(actions['baseline']['mae'], color='tab:red', ls='--',
                       label='constant baseline')
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, actions.get('reason', 'no chunks'), ha='center', transform=ax.transAxes)
    ax.set_xlabel('chunk step h (x dt)')
    ax.set_ylabel('MAE')
    ax.set_title('error vs horizon step')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_latency(plt, path: Path, record: ReplayRecord) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage, color in (('total', 'tab:blue'), ('encode', 'tab:orange'),
                         ('preprocess', 'tab:green')):
        values = [t[stage] for t in record.timings if stage in t]
        if values:
            ax.hist(values, bins=40, alpha=0.6, color=color, label=stage)
    ax.set_xlabel('ms (wall clock)')
    ax.set_ylabel('inferences')
    ax.set_title('engine latency per stage')
    if record.timings:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_input_age(plt, path: Path, record: ReplayRecord, origin: int) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if record.tick_times:
        t = [(s - origin) / NS_PER_S for s in record.tick_times]
        age = [(s - o) / 1e6 for s, o in zip(record.tick_times, record.tick_obs_stamps)]
        ax.plot(t, age, '.', ms=2, label='observation age at tick')
    if record.image_delays:
        t = [(s - origin) / NS_PER_S for s, _ in record.image_delays]
        ax.plot(t, [d / 1e6 for _, d in record.image_delays], '.', ms=2,
                label='image receive delay (log - stamp)')
    ax.set_xlabel('bag time (s)')
    ax.set_ylabel('ms')
    ax.set_title('input ages (bag clock)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _dim(errors: dict, name: str) -> float:
    value = errors['per_dim'].get(name)
    return value['mae'] if value else np.nan


def _nan(value) -> float:
    return np.nan if value is None else value


def _fmt(value, spec: str = '.4f') -> str:
    return '-' if value is None else format(value, spec)


def report_markdown(metrics: dict) -> str:
    """A short report.md embedding the plots."""
    counts, actions, thr = metrics['counts'], metrics['actions'], metrics['throughput']
    lines = [
        '# Replay report', '',
        f'- bag: `{metrics["bag"]}` ({metrics["bag_duration_s"]:.2f} s), status: '
        f'**{metrics["status"]}**',
        f'- model: `{metrics["model"]}` ({metrics["fusion"]} fusion), horizon '
        f'{metrics["horizon"]} x dt {metrics["dt"]} s',
        f'- inferences: {counts["inferences"]}, control ticks: {counts["ticks"]}, actions '
        f'published: {counts["actions"]}',
        f'- real-time factor: {_fmt(thr["real_time_factor"], ".1f")}x, replay throughput = '
        f'{_fmt(thr["replay_vs_engine_only"], ".1%")} of engine-only',
        f'- drops: {", ".join(f"{k} {v}" for k, v in metrics["drops"].items()) or "none"}',
        f'- clock gaps skipped: {metrics["clock_gaps"]["count"]} (longest '
        f'{metrics["clock_gaps"]["longest_s"]:.1f} s, {metrics["clock_gaps"]["skipped_ticks"]} '
        'ticks without input not run)',
        f'- output bag: `{metrics.get("output_bag", "")}`, '
        f'{metrics.get("output_messages", 0)} messages written', '',
        '## Actions vs recorded', '',
    ]
    if actions.get('available'):
        lines += [f'Recorded: {actions["source"]}, {actions["recorded_messages"]} messages.', '',
                  '| dim | tick MAE | tick RMSE | baseline MAE | baseline RMSE |',
                  '|---|---|---|---|---|']
        tick, base = actions.get('tick', {}), actions.get('baseline', {})
        for name in metrics['action_names']:
            t = (tick.get('per_dim') or {}).get(name)
            b = (base.get('per_dim') or {}).get(name)
            lines.append(f'| {name} | {_fmt(t and t["mae"])} | {_fmt(t and t["rmse"])} | '
                         f'{_fmt(b and b["mae"])} | {_fmt(b and b["rmse"])} |')
        lines.append(f'| **mean** | {_fmt(tick.get("mae"))} | {_fmt(tick.get("rmse"))} | '
                     f'{_fmt(base.get("mae"))} | {_fmt(base.get("rmse"))} |')
        if actions.get('horizon_mae'):
            lines += ['', 'MAE by chunk step h: ' + ', '.join(
                f'h{h}={_fmt(v)}' for h, v in enumerate(actions['horizon_mae']))]
    else:
        lines.append(f'No recorded action to compare with ({actions.get("reason")}).')
    lines += ['', '![actions](actions.png)', '', '![error vs horizon](horizon_error.png)', '',
              '## Latency (wall clock) and input ages (bag clock)', '',
              '| stage | p50 ms | p99 ms | mean ms |', '|---|---|---|---|']
    for stage, s in metrics['latency_ms'].items():
        if s:
            lines.append(f'| {stage} | {s["p50"]:.2f} | {s["p99"]:.2f} | {s["mean"]:.2f} |')
    for name, s in metrics['input_age_ms'].items():
        if s:
            lines.append(f'| age: {name} | {s["p50"]:.2f} | {s["p99"]:.2f} | {s["mean"]:.2f} |')
    lines += ['', '![latency](latency.png)', '', '![input age](input_age.png)', '']
    return '\n'.join(lines)
