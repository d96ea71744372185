import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vit_perception.errors import CheckpointError
from vit_perception.model.checkpoint import load_checkpoint, save_checkpoint
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy

STATS = {'pose_mean': [0.1] * 9, 'pose_std': [2.0] * 9, 'action_mean': [0.5] * 7,
         'action_std': [0.25] * 7}


@pytest.fixture
def saved(tmp_path):
    policy = build_policy(tiny_config(fusion__mode='late')).eval()
    policy.set_normalization(STATS)
    save_checkpoint(policy, tmp_path, extra={'epochs': 3})
    return policy, tmp_path


def test_round_trip_is_exact(saved):
    policy, path = saved
    assert sorted(p.name for p in path.iterdir()) == ['config.json', 'model.safetensors',
                                                       'normalization.json']
    loaded, training = load_checkpoint(path)
    assert training == {'epochs': 3}
    assert loaded.config == policy.config
    for name, tensor in policy.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.normalization() == policy.normalization()  # exact: float32 stored as float32
    pixels = torch.randn(1, 1, 3, 32, 32)
    args = (pixels, torch.randn(1, 3), torch.tensor([[0.0, 0, 0, 1]]))
    with torch.no_grad():
        for a, b in zip(policy(*args), loaded(*args)):
            assert torch.equal(a, b)


def test_pickle_only_checkpoint_is_refused(saved):
    _, path = saved
    (path / 'model.safetensors').unlink()
    (path / 'pytorch_model.bin').write_bytes(b'\x80\x04pickle')
    with pytest.raises(CheckpointError, match='pickles are never loaded'):
        load_checkpoint(path)


def test_a_pickle_file_instead_of_a_directory_is_refused(tmp_path):
    ckpt = tmp_path / 'policy.pt'
    ckpt.write_bytes(b'\x80\x04pickle')
    with pytest.raises(CheckpointError, match='pickle checkpoints are refused'):
        load_checkpoint(ckpt)


def test_shape_mismatch_names_the_tensor(saved):
    _, path = saved
    state = load_file(str(path / 'model.safetensors'))
    state['embedding_head.weight'] = torch.zeros(3, 3)
    save_file(state, str(path / 'model.safetensors'))
    with pytest.raises(CheckpointError, match="'embedding_head.weight' has shape"):
        load_checkpoint(path)


def test_missing_tensor_is_named(saved):
    _, path = saved
    state = load_file(str(path / 'model.safetensors'))
    del state['camera_embed']
    save_file(state, str(path / 'model.safetensors'))
    with pytest.raises(CheckpointError, match="tensor 'camera_embed' is missing"):
        load_checkpoint(path)


def test_unknown_config_key_is_named(saved):
    _, path = saved
    config = json.loads((path / 'config.json').read_text())
    config['fusion']['moed'] = 'late'
    (path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown config key 'fusion.moed'"):
        load_checkpoint(path)


def test_corrupt_weights_and_bad_stats(saved):
    _, path = saved
    stats = dict(STATS, action_std=[0.0] * 7)
    (path / 'normalization.json').write_text(json.dumps(stats))
    with pytest.raises(CheckpointError, match="'action_std' must be > 0"):
        load_checkpoint(path)
    (path / 'model.safetensors').write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match='not a valid safetensors file'):
        load_checkpoint(path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint directory not found'):
        load_checkpoint(tmp_path / 'nope')
