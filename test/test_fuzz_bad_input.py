"""Property-based fuzzing (hypothesis) of config files and checkpoint directories.

Whatever the file holds: a valid config/checkpoint, or ONE line of at most 500 bytes (exit code
2 from the CLI, no traceback), with bounded memory; a checkpoint that loads never makes the node
publish a non-finite value. Example counts are small so the suite stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_perception.config import MAX_CONTROL_RATE_HZ, NODE_NAME, NodeConfig, load_node_config
from vit_perception.core.engine import Engine
from vit_perception.core.node import PerceptionCore
from vit_perception.core.types import ImageFrame, PoseSample
from vit_perception.errors import MAX_ERROR_BYTES, CheckpointError, ConfigError
from vit_perception.model.checkpoint import STATS_KEYS, load_checkpoint, save_checkpoint
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy
from vit_perception.schema import flatten

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000
T0 = 1000 * 1_000_000_000
RSS_GROWTH_LIMIT_MB = 512

NODE_DATA = dataclasses.asdict(NodeConfig())
NODE_KEYS = sorted(set(flatten(NODE_DATA)) | set(NODE_DATA))  # dotted names and group names

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(['1e9', '.inf', 'cuda', 'cpu', 'best_effort', '/topic', '']))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
keys = st.one_of(st.sampled_from(NODE_KEYS), st.text(max_size=12),
                 st.integers(min_value=-5, max_value=5))
mappings = st.dictionaries(keys, values, max_size=6)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def assert_bounded_one_line(err: Exception) -> None:
    text = str(err)
    assert '\n' not in text and len(text.encode()) <= MAX_ERROR_BYTES, text[:200]


def assert_valid_node_config(config: NodeConfig) -> None:
    for name, value in flatten(dataclasses.asdict(config)).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float):
                assert math.isfinite(item), name
    assert 0 < config.control.control_rate_hz <= MAX_CONTROL_RATE_HZ


def render(data, layout: str) -> str:
    if layout == 'ros':
        data = {NODE_NAME: {'ros__parameters': data}}
    return yaml.safe_dump(data, allow_unicode=True)


# ------------------------------------------------------------------------ config files ---

@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mappings, layout=st.sampled_from(['plain', 'ros']))
def test_fuzzed_config_files_load_or_give_one_bounded_line(data, layout):
    start = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'config.yaml'
        path.write_text(render(data, layout))
        try:
            config = load_node_config(path)
        except ConfigError as err:
            assert_bounded_one_line(err)
        else:
            assert_valid_node_config(config)
    assert rss_mb() - start < RSS_GROWTH_LIMIT_MB


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=300))
def test_fuzzed_bytes_as_a_config_file_give_one_bounded_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'config.yaml'
        path.write_bytes(raw)
        try:
            assert_valid_node_config(load_node_config(path))
        except ConfigError as err:
            assert_bounded_one_line(err)


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.tuples(st.sampled_from(NODE_KEYS), scalars), min_size=1, max_size=3))
def test_fuzzed_set_overrides_give_a_valid_config_or_one_bounded_line(items):
    overrides = [f'{key}={yaml.safe_dump(value, default_flow_style=True).strip()}'
                 .removesuffix('...').strip() for key, value in items]
    try:
        assert_valid_node_config(load_node_config(None, overrides))
    except ConfigError as err:
        assert_bounded_one_line(err)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mappings)
def test_fuzzed_config_in_a_process_is_exit_code_2_and_one_line(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'config.yaml'
        path.write_text(render(data, 'plain'))
        # A config that happens to be valid stops at the missing checkpoint: still exit 2.
        done = subprocess.run(
            [sys.executable, '-m', 'vit_perception.tools.cli', 'node', '--backend', 'dds',
             '--config', str(path), '--model', str(Path(tmp) / 'no_checkpoint')],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = [line for line in done.stderr.splitlines() if 'loading' not in line]
    assert done.returncode == 2 and len(lines) == 1 and 'Traceback' not in done.stderr
    assert len(lines[0].encode()) <= MAX_ERROR_BYTES


# -------------------------------------------------------------------- checkpoint directories ---

_BASE: dict[str, Path] = {}


def base_checkpoint() -> Path:
    """One tiny checkpoint per session, copied and mutated by each example."""
    if 'path' not in _BASE:
        torch.manual_seed(0)
        _BASE['path'] = save_checkpoint(build_policy(tiny_config()),
                                        Path(tempfile.mkdtemp(prefix='fuzz_ckpt_')) / 'tiny')
    return _BASE['path']


def _config_paths() -> list[str]:
    data = json.loads((base_checkpoint() / 'config.json').read_text())
    return sorted(flatten(data))


def set_path(data: dict, dotted: str, value) -> None:
    keys = dotted.split('.')
    for key in keys[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[keys[-1]] = value


class RecordingOutputs:
    def __init__(self):
        self.arrays = []

    def publish_embedding(self, result, frame_id):
        self.arrays.append(np.asarray(result.embedding, dtype=np.float32))

    def publish_chunk(self, result):
        self.arrays.append(np.asarray(result.chunk, dtype=np.float32))

    def publish_action(self, stamp_ns, action, observation_stamp_ns):
        self.arrays.append(np.asarray(action, dtype=np.float32))

    def publish_diagnostics(self, report):
        pass

    def log(self, level, text):
        pass


def run_one_observation(policy) -> RecordingOutputs:
    """The loaded policy through the core: one observation, one tick; returns what was sent."""
    engine = Engine(policy, device='cpu', dtype='fp32', warmup_iters=0)
    outputs, clock = RecordingOutputs(), [T0]
    config = NodeConfig.from_dict({'topics': {'cameras': ['/c'] * len(policy.config.cameras),
                                              'camera_transports': ['raw'] * len(
                                                  policy.config.cameras)}})
    core = PerceptionCore(config, engine, outputs, lambda: clock[0], threaded=False)
    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    for stamp in (T0 - 10 * MS, T0 + 10 * MS):
        core.on_pose(PoseSample(stamp, 'base', np.array([0.3, 0.0, 0.2]),
                                np.array([0.0, 0.0, 0.0, 1.0])))
    clock[0] = T0 + 12 * MS
    for camera in range(len(policy.config.cameras)):
        core.on_image(ImageFrame(T0, 'cam', pixels.tobytes(), 24, 40, 'rgb8', 120, camera))
    core.run_pending()
    clock[0] = T0 + 20 * MS
    core.tick()
    return outputs


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_checkpoints_load_or_give_one_bounded_line_and_never_non_finite_output(data):
    base = base_checkpoint()
    paths = _config_paths()
    edits = data.draw(st.lists(st.tuples(st.sampled_from(paths), values), max_size=3))
    stats_edits = data.draw(st.lists(st.tuples(
        st.sampled_from(STATS_KEYS), st.integers(min_value=0, max_value=8),
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                  st.none())), max_size=2))
    clobber = data.draw(st.one_of(st.none(), st.tuples(
        st.sampled_from(['config.json', 'normalization.json', 'model.safetensors']),
        st.binary(max_size=64))))
    start = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / 'ckpt'
        shutil.copytree(base, directory)
        config = json.loads((directory / 'config.json').read_text())
        for dotted, value in edits:
            set_path(config, dotted, value)
        (directory / 'config.json').write_text(json.dumps(config))
        stats = json.loads((directory / 'normalization.json').read_text())
        for key, index, value in stats_edits:
            if index < len(stats[key]):
                stats[key][index] = value
        (directory / 'normalization.json').write_text(json.dumps(stats))
        if clobber is not None:
            (directory / clobber[0]).write_bytes(clobber[1])
        try:
            policy, _ = load_checkpoint(directory)
        except CheckpointError as err:
            assert_bounded_one_line(err)
        else:
            for array in run_one_observation(policy).arrays:
                assert np.isfinite(array).all()
    assert rss_mb() - start < RSS_GROWTH_LIMIT_MB


@pytest.fixture(scope='module', autouse=True)
def _remove_base_checkpoint():
    yield
    if 'path' in _BASE:
        shutil.rmtree(_BASE.pop('path').parent, ignore_errors=True)
