"""Checkpoint = one directory: config.json + model.safetensors + normalization.json.

Checkpoints are untrusted files: only safetensors are read (never pickle), every tensor's name and
shape is checked against the config, and each problem is one line naming the file or tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vit_perception.config import PolicyConfig
from vit_perception.errors import CheckpointError, ConfigError
from vit_perception.model.backbone import PICKLE_SUFFIXES
from vit_perception.model.policy import VisionPosePolicy, build_policy

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
STATS_FILE = 'normalization.json'
STATS_KEYS = ('pose_mean', 'pose_std', 'action_mean', 'action_std')


def save_checkpoint(policy: VisionPosePolicy, directory: str | Path,
                    extra: dict | None = None) -> Path:
    """Write the policy to `directory`; `extra` (e.g. training summary) goes into config.json."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = policy.config.to_dict()
    if extra:
        config['training'] = extra
    state = {name: tensor.detach().to('cpu').contiguous()
             for name, tensor in policy.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={'format': 'pt'})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + '\n')
    (directory / STATS_FILE).write_text(json.dumps(policy.normalization(), indent=2) + '\n')
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = 'cpu'
                    ) -> tuple[VisionPosePolicy, dict]:
    """-> (policy in eval mode on `device`, training info from config.json or {})."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    _check_directory(directory)
    data = _read_json(directory / CONFIG_FILE)
    training = data.pop('training', {})
    try:
        config = PolicyConfig.from_dict(data)
    except ConfigError as err:
        raise CheckpointError(f'{directory / CONFIG_FILE}: {err}') from None
    policy = build_policy(config)
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
    stats = _read_json(path)
    sizes = {'pose_mean': policy.pose_tokenizer.normalizer.mean.numel(),
             'action_mean': policy.action_dim}
    for key in STATS_KEYS:
        size = sizes[key.replace('_std', '_mean')]
        values = stats.get(key)
        if (not isinstance(values, list) or len(values) != size
                or not all(isinstance(v, (int, float)) for v in values)):
            raise CheckpointError(f'{path}: {key!r} must be a list of {size} numbers')
        if key.endswith('_std') and min(values) <= 0:
            raise CheckpointError(f'{path}: {key!r} must be > 0')
    return stats


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f'{path}: not valid JSON ({err})') from None
    if not isinstance(data, dict):
        raise CheckpointError(f'{path}: expected a JSON object')
    return data
