"""Checkpoint = one directory: config.json + model.safetensors + normalization.json.

Checkpoints are untrusted files: only safetensors are read (never pickle), every tensor's name and
shape is checked against the config, and each problem is one line naming the file or tensor.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vit_perception.errors import CheckpointError, ConfigError
from vit_perception.model.backbone import PICKLE_SUFFIXES
from vit_perception.model.config import PolicyConfig
from vit_perception.model.policy import VisionPosePolicy, build_policy

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
STATS_FILE = 'normalization.json'
STATS_KEYS = ('pose_mean', 'pose_std', 'action_mean', 'action_std')
MAX_JSON_BYTES = 16 << 20  # config.json (with hf_config) and normalization.json are small


def save_checkpoint(policy: VisionPosePolicy, directory: str | Path,
                    extra: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write the policy to `directory`; `extra` (e.g. training summary) goes into config.json.

    Atomic: a new directory is written in full next to its final name, then renamed; files of an
    existing checkpoint (`overwrite=True` only) are each replaced by a rename, so a reader (or a
    crash) never sees a half-written file.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    check_output_directory(directory, overwrite)
    config = policy.config.to_dict()
    if extra:
        config['training'] = extra
    state = {name: tensor.detach().to('cpu').contiguous()
             for name, tensor in policy.state_dict().items()}
    with atomic_directory(directory) as target:
        with atomic_file(target / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={'format': 'pt'})
        write_text_atomic(target / CONFIG_FILE, json.dumps(config, indent=2) + '\n')
        write_text_atomic(target / STATS_FILE,
                          json.dumps(policy.normalization(), indent=2) + '\n')
    return directory


def check_output_directory(directory: Path, overwrite: bool) -> None:
    """CheckpointError unless `directory` can take a new checkpoint: it must not be a file, nor
    hold a checkpoint already (unless `overwrite`), and its parent must be writable."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f'{directory}: is a file; expected a checkpoint directory to write')
    if directory.is_dir() and not overwrite and any(
            (directory / name).exists() for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE)):
        raise CheckpointError(f'{directory}: holds a checkpoint already; choose a new directory '
                              'or pass --overwrite')
    parent = directory if directory.is_dir() else _existing_parent(directory)
    if not os.access(parent, os.W_OK):
        raise CheckpointError(f'{parent}: not writable; choose another output directory')


def _existing_parent(path: Path) -> Path:
    path = path.absolute().parent
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f'{path}: is a file; expected a directory above the output')
    return path


class atomic_directory:
    """`with atomic_directory(d) as target`: a new `d` is written into a temporary sibling and
    renamed into place at the end (removed on error); an existing `d` is written in place."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.temporary: Path | None = None

    def __enter__(self) -> Path:
        if self.directory.is_dir():
            return self.directory
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = Path(tempfile.mkdtemp(prefix=f'.{self.directory.name}.',
                                               dir=self.directory.parent))
        return self.temporary

    def __exit__(self, kind, error, trace) -> None:
        if self.temporary is None:
            return
        if kind is None:
            os.chmod(self.temporary, 0o777 & ~_umask())
            os.rename(self.temporary, self.directory)
        else:
            shutil.rmtree(self.temporary, ignore_errors=True)


class atomic_file:
    """`with atomic_file(path) as tmp`: write `tmp`; it replaces `path` by a rename at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')

    def __enter__(self) -> Path:
        return self.temporary

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            with open(self.temporary, 'rb') as stream:
                os.fsync(stream.fileno())
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(directory: str | Path, device: str | torch.device = 'cpu'
                    ) -> tuple[VisionPosePolicy, dict]:
    """-> (policy in eval mode on `device`, training info from config.json or {})."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        _check_directory(directory)
    except OSError as err:  # unreadable directory (permissions), broken link, ...
        raise CheckpointError(f'{directory}: cannot read the checkpoint directory '
                              f'({err.strerror or err})') from None
    data = _read_json(directory / CONFIG_FILE)
    training = data.pop('training', {})
    try:
        config = PolicyConfig.from_dict(data)  # also checks the model budget: nothing built yet
    except ConfigError as err:
        raise CheckpointError(f'{directory / CONFIG_FILE}: {err}') from None
    try:
        policy = build_policy(config)
    except Exception as err:  # transformers' own validation of hf_config values, ...
        raise CheckpointError(f'{directory / CONFIG_FILE}: the model cannot be built from it '
                              f'({type(err).__name__}: {err})') from None
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f'{directory / WEIGHTS_FILE}: not a valid safetensors file '
                              f'({err})') from None
    _check_state(policy, state, directory / WEIGHTS_FILE)
    policy.load_state_dict(state, strict=True)
    policy.set_normalization(_read_stats(directory / STATS_FILE, policy))
    return policy.to(device).eval(), training


def _check_directory(directory: Path) -> None:
    if directory.is_file():
        hint = ' (pickle checkpoints are refused)' if directory.suffix in PICKLE_SUFFIXES else ''
        raise CheckpointError(f'{directory}: expected a checkpoint directory (config.json + '
                              f'model.safetensors + normalization.json), got a file{hint}')
    if not directory.is_dir():
        raise CheckpointError(f'{directory}: checkpoint directory not found')
    if not (directory / WEIGHTS_FILE).is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            found = ', '.join(pickles)
            raise CheckpointError(f'{directory}: only pickle weights found ({found}); '
                                  'pickles are never loaded: save the weights as '
                                  f'{WEIGHTS_FILE} (safetensors)')
        raise CheckpointError(f'{directory}: {WEIGHTS_FILE} is missing')
    for name in (CONFIG_FILE, STATS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f'{directory}: {name} is missing')


def _check_state(policy: VisionPosePolicy, state: dict, path: Path) -> None:
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f'{path}: tensor {missing[0]!r} is missing '
                              f'({len(missing)} missing in all); config.json does not match')
    if unexpected:
        raise CheckpointError(f'{path}: unexpected tensor {unexpected[0]!r} '
                              f'({len(unexpected)} in all); config.json does not match')
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f'{path}: tensor {name!r} has shape {tuple(tensor.shape)}, '
                                  f'config.json implies {tuple(expected[name].shape)}')
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise CheckpointError(f'{path}: tensor {name!r} is not finite floating point')


def _read_stats(path: Path, policy: VisionPosePolicy) -> dict:
    stats = _read_json(path, finite=True)
    sizes = {'pose_mean': policy.pose_tokenizer.normalizer.mean.numel(),
             'action_mean': policy.action_dim}
    for key in STATS_KEYS:
        size = sizes[key.replace('_std', '_mean')]
        values = stats.get(key)
        if (not isinstance(values, list) or len(values) != size
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in values)):
            raise CheckpointError(f'{path}: {key!r} must be a list of {size} numbers')
        if not all(math.isfinite(v) for v in values):
            raise CheckpointError(f'{path}: {key!r} holds a non-finite value (NaN or Infinity); '
                                  'recompute the statistics')
        if key.endswith('_std') and min(values) <= 0:
            raise CheckpointError(f'{path}: {key!r} must be > 0')
    return stats


def _read_json(path: Path, finite: bool = False) -> dict:
    """The JSON object in `path` (bounded size); `finite`: NaN / Infinity are refused."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f'{path}: {path.stat().st_size} bytes; expected at most '
                                  f'{MAX_JSON_BYTES}')
        data = json.loads(path.read_bytes().decode('utf-8'),
                          parse_constant=_refuse_constant if finite else None)
    except OSError as err:
        raise CheckpointError(f'{path}: cannot read it ({err.strerror or err})') from None
    except NonFiniteError as err:
        raise CheckpointError(f'{path}: holds {err}; every value must be a finite number '
                              '(recompute the statistics)') from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
        raise CheckpointError(f'{path}: not valid JSON ({err})') from None
    except RecursionError:
        raise CheckpointError(f'{path}: not valid JSON (nested too deeply)') from None
    if not isinstance(data, dict):
        raise CheckpointError(f'{path}: expected a JSON object')
    return data


class NonFiniteError(ValueError):
    """NaN / Infinity / -Infinity in a JSON file that must hold finite numbers."""


def _refuse_constant(name: str):
    raise NonFiniteError(name)
