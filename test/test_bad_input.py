"""Hostile files, flags and parameters: one line (<= 500 bytes), exit code 2, nothing allocated
for an absurd model, no traceback; a bug is one line plus a traceback in a log file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vit_perception.config import NodeConfig, load_node_config
from vit_perception.errors import (
    MAX_ERROR_BYTES,
    CheckpointError,
    ConfigError,
    one_line,
    short_repr,
)
from vit_perception.model.checkpoint import load_checkpoint, save_checkpoint
from vit_perception.model.config import PolicyConfig, estimate_parameters, tiny_config
from vit_perception.model.policy import build_policy
from vit_perception.schema import MAX_CONFIG_FILE_BYTES
from vit_perception.tools import cli

ROOT = Path(__file__).resolve().parent.parent


def assert_one_line(text: str) -> None:
    assert '\n' not in text.strip() and 'Traceback' not in text
    assert len(text.strip().encode()) <= MAX_ERROR_BYTES


def cli_error(capsys, argv: list[str]) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'loading' not in line]
    assert len(lines) == 1, err
    assert_one_line(lines[0])
    return code, lines[0]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_policy(tiny_config()), tmp_path_factory.mktemp('ck') / 'tiny')


def variant(checkpoint: Path, tmp_path: Path, edit) -> Path:
    directory = tmp_path / 'variant'
    shutil.copytree(checkpoint, directory)
    edit(directory)
    return directory


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------- error text bounds ---

def test_one_line_bounds_a_300_mb_message_quickly():
    huge = 'x' * (300 << 20) + '\nsecond line'
    start = time.perf_counter()
    line = one_line(huge)
    assert time.perf_counter() - start < 5.0  # not a timing test: a guard against O(n) splits
    assert len(line.encode()) <= MAX_ERROR_BYTES and '\n' not in line
    assert line.startswith('xxx') and line.endswith('second line') and ' ... ' in line


def test_short_repr_never_builds_the_full_repr():
    nested = [1]
    for _ in range(40):  # 2**40 leaves if walked: reprlib stops at depth 2
        nested = [nested, nested]
    assert len(short_repr(nested)) < 40
    assert len(short_repr('y' * 10**7)) < 70


# ---------------------------------------------------------------------- config files / --set ---

BAD_YAML = {
    'alias_bomb': ('a: &a [1,2,3,4,5,6,7,8,9]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                   'safety:\n  action_min: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n',
                   'alias *'),
    'int_key': ('1: 2\n', 'key 1 is a int'),
    'node_not_mapping': ('vit_perception: 5\n', 'to hold a mapping'),
    'params_list': ('vit_perception:\n  ros__parameters: [1, 2]\n', 'got list'),
    'group_scalar': ('sync: 5\n', 'sync: expected a mapping'),
    'top_level_list': ('- 1\n- 2\n', 'mapping at the top level'),
    'infinite_rate': ('control:\n  control_rate_hz: .inf\n', 'expected a finite number'),
    'nan_age': ('sync:\n  max_observation_age: .nan\n', 'expected a finite number'),
    'deep': ('[' * 200 + ']' * 200, 'nested deeper than 32'),
    'broken': ('a: [1\n', 'not valid YAML'),
    'nested_int_key': ('sync:\n  3: 1\n', 'key 3 is a int'),
}


@pytest.mark.parametrize('name', sorted(BAD_YAML))
def test_bad_yaml_files_are_one_line_config_errors(tmp_path, name):
    text, expected = BAD_YAML[name]
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        load_node_config(path)
    assert_one_line(str(info.value))


def test_non_utf8_directory_and_oversized_config_files(tmp_path):
    binary = tmp_path / 'binary.yaml'
    binary.write_bytes(b'\xff\xfe\x00control: 1')
    with pytest.raises(ConfigError, match='not UTF-8 text'):
        load_node_config(binary)
    with pytest.raises(ConfigError, match='is a directory'):
        load_node_config(tmp_path)
    big = tmp_path / 'big.yaml'
    big.write_text('# ' + 'x' * MAX_CONFIG_FILE_BYTES)
    with pytest.raises(ConfigError, match='a config file is at most'):
        load_node_config(big)


def test_scalar_aliases_are_still_accepted(tmp_path):
    path = tmp_path / 'ok.yaml'
    path.write_text('sync:\n  max_pose_skew: &s 0.04\n  camera_tolerance: *s\n')
    assert load_node_config(path).sync.camera_tolerance == 0.04


@pytest.mark.parametrize('item, expected', [
    ('control.control_rate_hz=[1', 'not valid YAML'),
    ('=3', 'expected key=value'),
    ('a..b=3', 'expected a dotted name'),
    ('control.control_rate_hz=1e9', 'control.control_rate_hz=1000000000.0: expected 0.1..1000'),
    ('control.control_rate_hz=3e9', 'expected 0.1..1000 Hz'),
    ('control.control_rate_hz=1e-9', 'expected 0.1..1000 Hz'),
    ('diagnostics_period=1e-9', 'expected 0.01..3600 s'),
    ('control.control_rate_hz=.inf', 'expected a finite number'),
    ('sync.max_observation_age=.inf', 'expected a finite number'),
    ('sync.max_observation_age=1e300', 'must be <= 60'),
    ('diagnostics_period=.inf', 'expected a finite number'),
    ('safety.max_inference_time=1e20', 'must be <= 3600'),
    ('safety.action_min=[1e400]', 'expected a finite number'),
    ('log_throttle=-1', 'must be > 0'),
    ('domain_id=99999999999999999999999', 'expected -1'),
    ('engine.device=foo', 'expected auto, cpu, cuda'),
    ('engine.warmup_iters=1000000', 'expected 0..100000'),
    ('qos.image_depth=100000000', 'must be <= 10000'),
    ('topics.cameras=[' + ','.join(['/c'] * 2000) + ']', 'at most 1024'),
    ('x' * 100000 + '=1', 'unknown config key'),
])
def test_bad_set_values_are_bounded_one_line_errors(item, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        load_node_config(None, [item])
    assert_one_line(one_line(info.value))
    assert len(str(info.value).encode()) <= MAX_ERROR_BYTES


def test_numbers_without_a_dot_and_the_rate_limit_itself_are_accepted():
    config = load_node_config(None, ['control.control_rate_hz=1e3', 'sync.max_future=2E-2'])
    assert config.control.control_rate_hz == 1000.0 and config.sync.max_future == 0.02


def test_default_yaml_and_defaults_are_inside_every_limit():
    assert load_node_config(ROOT / 'config' / 'default.yaml') == NodeConfig()


# ------------------------------------------------------------------------ model budget ---

@pytest.mark.parametrize('overrides', [
    {},
    {'fusion__mode': 'late'},
    {'backbone__num_layers': 4, 'backbone__hidden_size': 64, 'backbone__num_heads': 4},
    {'cameras': ['a', 'b'], 'pose__num_tokens': 3, 'actions__horizon': 10},
])
def test_parameter_estimate_is_within_5_percent_of_the_built_model(overrides):
    config = tiny_config(**overrides)
    built = sum(p.numel() for p in build_policy(config).parameters())
    assert abs(estimate_parameters(config) - built) <= 0.05 * built


def test_default_sizes_estimate_matches_the_built_model():
    config = PolicyConfig()
    built = sum(p.numel() for p in build_policy(config).parameters())  # ViT-S/16: 22 M
    assert abs(estimate_parameters(config) - built) <= 0.01 * built


def test_a_model_over_budget_is_refused_from_its_config_alone():
    data = tiny_config().to_dict()
    data['backbone'].update(hidden_size=8192, num_layers=64, num_heads=64, hf_config={})
    with pytest.raises(ConfigError, match='the budget is 1e\\+09'):
        PolicyConfig.from_dict(data)


@pytest.mark.parametrize('edit, expected', [
    (lambda c: c['backbone'].update(num_layers=100000, hf_config={}), 'num_layers=100000'),
    (lambda c: c['backbone']['hf_config'].update(num_hidden_layers=100000),
     'num_hidden_layers=100000'),
    (lambda c: c['backbone']['hf_config'].update(hidden_size='abc'), "hidden_size='abc'"),
    (lambda c: c['backbone']['hf_config'].update(layer_norm_eps='abc'), 'cannot be built'),
    (lambda c: c['backbone']['hf_config'].update(image_size=4096, patch_size=1),
     'tokens per camera'),
    (lambda c: c['backbone'].update(hf_config=[1]), 'expected a mapping'),
    (lambda c: c['actions'].update(horizon=10**12), 'actions.horizon'),
    (lambda c: c['actions'].update(dt=1e309), 'expected a finite number'),
    (lambda c: c.update({'7': 1}), "unknown config key '7'"),
])
def test_hostile_checkpoint_configs_are_one_line_before_allocation(checkpoint, tmp_path, edit,
                                                                   expected):
    directory = variant(checkpoint, tmp_path,
                        lambda d: edit_json(d / 'config.json', edit))
    with pytest.raises(CheckpointError, match=re.escape(expected)) as info:
        load_checkpoint(directory)
    assert_one_line(one_line(info.value))


# --------------------------------------------------------------------- checkpoint files ---

@pytest.mark.parametrize('key, value, name', [
    ('action_mean', float('nan'), 'NaN'), ('pose_std', float('inf'), 'Infinity'),
    ('pose_mean', float('-inf'), '-Infinity')])
def test_non_finite_normalization_is_refused_at_load(checkpoint, tmp_path, key, value, name):
    directory = variant(checkpoint, tmp_path, lambda d: edit_json(
        d / 'normalization.json', lambda s: s[key].__setitem__(0, value)))
    with pytest.raises(CheckpointError, match=f'holds {re.escape(name)}; every value must be '
                       'a finite number'):
        load_checkpoint(directory)


@pytest.mark.parametrize('edit, expected', [
    (lambda d: (d / 'config.json').write_bytes(b'\xff\xfe{}'), 'not valid JSON'),
    (lambda d: (d / 'config.json').write_text('[' * 100000 + ']' * 100000), 'nested too deeply'),
    (lambda d: ((d / 'config.json').unlink(), (d / 'config.json').mkdir()),
     'config.json is missing'),
    (lambda d: (d / 'normalization.json').write_text('{"pose_mean": true}'), 'pose_mean'),
])
def test_broken_checkpoint_files_are_one_line(checkpoint, tmp_path, edit, expected):
    directory = variant(checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_checkpoint(directory)


def test_unreadable_checkpoint_directory_is_one_line(checkpoint, tmp_path, monkeypatch):
    # Root ignores permission bits, so the refusal is simulated where the OS would raise it.
    def denied(self, *args, **kwargs):
        raise PermissionError(13, 'Permission denied', str(self))

    monkeypatch.setattr(Path, 'is_file', denied)
    with pytest.raises(CheckpointError, match='cannot read the checkpoint directory '
                       r'\(Permission denied\)'):
        load_checkpoint(checkpoint)


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads a mode-000 directory')
def test_mode_000_checkpoint_directory_is_one_line(checkpoint, tmp_path):
    directory = variant(checkpoint, tmp_path, lambda d: None)
    directory.chmod(0)
    try:
        with pytest.raises(CheckpointError):
            load_checkpoint(directory)
    finally:
        directory.chmod(0o755)


def test_cuda_without_cuda_is_one_line(checkpoint, capsys):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    code, line = cli_error(capsys, ['node', '--backend', 'dds', '--model', str(checkpoint),
                                    '--set', 'engine.device=cuda:0'])
    assert code == 2 and "engine.device='cuda:0': this machine has 0 CUDA devices" in line


# ----------------------------------------------------------------------- the CLI's one place ---

def test_bad_flags_are_one_line_without_the_usage_block(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(['replay', 'x', '--storage', 'zzz'])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count('\n') == 1
    assert "invalid choice: 'zzz'" in err and '(see vit-perception replay --help)' in err


@pytest.mark.parametrize('argv, expected', [
    (['bench', '--live', '--rate', 'nan'], '--rate nan: expected a finite number'),
    (['sim', '--action-timeout', 'inf'], '--action-timeout inf: expected a finite number'),
    (['demo', '--timeout=-inf'], '--timeout -inf: expected a finite number'),
])
def test_non_finite_number_flags_are_refused_by_the_parser(capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count('\n') == 1 and expected in err


def test_replay_report_at_a_file_is_refused_before_the_model_loads(capsys, tmp_path):
    target = tmp_path / 'report.md'
    target.write_text('keep me')
    code, line = cli_error(capsys, ['replay', str(tmp_path / 'no_bag'), '--report', str(target)])
    assert code == 2 and line.endswith(f'--report {target}: is a file; expected a directory')
    assert target.read_text() == 'keep me'


def test_train_options_out_of_range_are_one_line():
    from vit_perception.tools.train import TrainOptions

    for options, expected in (({'lr': 1e9}, 'lr in (0, 10]'), ({'weight_decay': -1.0}, 'lr in'),
                              ({'val_fraction': 7.0}, '--val-fraction 7.0')):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            TrainOptions(**options)


def test_os_errors_on_user_files_are_one_line(capsys, tmp_path):
    def run(args):
        raise IsADirectoryError(21, 'Is a directory', str(tmp_path))

    args = cli.build_parser().parse_args(['node'])
    args.run = run
    assert cli.run_command(args) == 2
    assert capsys.readouterr().err == f'vit-perception node: error: {tmp_path}: Is a directory\n'


def test_a_bug_is_one_line_and_its_traceback_goes_to_a_log_file(capsys, monkeypatch):
    from vit_perception.tools import node

    def broken(args):
        raise ZeroDivisionError('division by zero deep inside')

    monkeypatch.setattr(node, 'run', broken)
    assert cli.main(['node']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert len(err.strip().encode()) <= MAX_ERROR_BYTES
    assert 'internal error (please report it): ZeroDivisionError: division by zero deep inside' \
        in err
    log = Path(re.search(r'traceback in (\S+\.log)', err).group(1))
    text = log.read_text()
    log.unlink()
    assert text.startswith('Traceback') and 'in broken' in text
    assert text.rstrip().endswith('ZeroDivisionError: division by zero deep inside')


SUBPROCESS_CASES = [
    (['node', '--set', 'control.control_rate_hz=.inf'], 'expected a finite number'),
    (['node', '--backend', 'dds', '--set', 'engine.device=foo'], 'engine.device'),
    (['train', 'nowhere', '--out', '/dev/null'], 'is a file'),
]


@pytest.mark.parametrize('argv, expected', SUBPROCESS_CASES)
def test_cli_process_exit_code_2_and_one_line(argv, expected):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, '-m', 'vit_perception.tools.cli', *argv],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == ''
    assert len(done.stderr.splitlines()) == 1 and expected in done.stderr
    assert_one_line(done.stderr)


# ------------------------------------------------------------------ output bags and kill -9 ---

KILLED_WRITER = """
import os, sys
import numpy as np
from vit_perception.drivers import ros_types
from vit_perception.drivers.bag import BagOutput
bag = BagOutput(sys.argv[1], sys.argv[2], checkpoint_every=int(sys.argv[4]))
bag.add_topic('/t', ros_types.ACTION_CHUNK)
for i in range(int(sys.argv[3])):
    bag.write('/t', 10**9 + i * 10**6, ros_types.action_chunk_msg(
        i, ['a'], 0.1, np.full((1, 1), i, np.float32), i))
os._exit(9)  # no close, no flush: as kill -9
"""


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('written, every, durable', [(1050, 200, 1000), (150, 200, 0),
                                                     (1000, 10**9, 0)])
def test_a_killed_bag_writer_keeps_every_message_up_to_its_last_checkpoint(
        tmp_path, storage, written, every, durable):
    from vit_perception.drivers import ros_types
    from vit_perception.drivers.bag import _open_reader

    out = tmp_path / 'out'
    subprocess.run([sys.executable, '-c', KILLED_WRITER, str(out), storage, str(written),
                    str(every)], env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False,
                   timeout=120)
    assert not (out / 'metadata.yaml').exists()
    if durable == 0 and storage == 'mcap':  # nothing reached the file: an empty .mcap
        assert (out / 'out.mcap').stat().st_size == 0
        return
    reader = _open_reader(out)
    try:
        values = [ros_types.chunk_from_msg(ros_types.deserialize(bytes(raw), c.msgtype))
                  .chunk[0, 0] for c, _, raw in reader.messages()]
    finally:
        reader.close()
    assert values == list(range(durable))
