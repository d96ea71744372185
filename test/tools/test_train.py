"""`vit-perception train` on tiny recorded episodes: observations built as the node builds them,
chunk targets, normalization, loss going down, determinism, exact resume, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import Reader
from safetensors.torch import load_file

from vit_perception.config import NodeConfig
from vit_perception.core.images import image_to_array
from vit_perception.core.preprocess import Preprocessor
from vit_perception.drivers.bag import BagInput
from vit_perception.model.checkpoint import load_checkpoint
from vit_perception.model.config import PolicyConfig
from vit_perception.tools import cli, dataset, train
from vit_perception.tools.sim.scene import ACTION_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/doubles.py (importlib mode)
from doubles import TINY_POLICY as TINY  # noqa: E402

MS = 1_000_000


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('config') / 'policy.json'
    path.write_text(json.dumps(TINY))
    return path


def train_cli(bags, out, config_file, *extra):
    return cli.main(['train', str(bags), '--out', str(out), '--config', str(config_file),
                     '--augment-shift', '2', '--batch-size', '8', *extra])


def weights(directory):
    return load_file(str(Path(directory) / 'model.safetensors'))


# ------------------------------------------------------------------------------ dataset ---

def test_chunk_targets_take_the_action_in_effect_and_mask_past_the_recording():
    stamps = np.array([100, 200, 300]) * MS
    actions = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    obs = np.array([100, 150, 250, 300, 400, 50]) * MS
    targets, mask = dataset.chunk_targets(obs, stamps, actions, horizon=3, dt_ns=100 * MS)
    assert targets[:, :, 0].tolist() == [[1, 2, 3], [1, 2, 3], [2, 3, 3], [3, 3, 3],
                                         [3, 3, 3], [1, 1, 2]]
    assert mask.tolist() == [[True, True, True], [True, True, False], [True, False, False],
                             [True, False, False], [False, False, False],
                             [False, True, True]]


def test_find_bags_walks_directories_and_rejects_missing_paths(bags, tmp_path):
    found = dataset.find_bags([bags])
    assert [p.name for p in found] == ['episode_0000', 'episode_0001', 'episode_0002']
    assert dataset.find_bags([found[1], bags]) == [found[1], found[0], found[2]]
    with pytest.raises(dataset.BagError, match='not found'):
        dataset.find_bags([tmp_path / 'nope'])
    with pytest.raises(dataset.BagError, match='no bags found'):
        dataset.find_bags([tmp_path])


def test_split_is_by_episode_seeded_and_never_empty():
    train_eps, val_eps = dataset.split_episodes(10, 0.2, seed=3)
    assert len(val_eps) == 2 and sorted(train_eps + val_eps) == list(range(10))
    assert dataset.split_episodes(10, 0.2, seed=3) == (train_eps, val_eps)
    assert dataset.split_episodes(10, 0.2, seed=4) != (train_eps, val_eps)
    assert dataset.split_episodes(2, 0.01, seed=0)[1] != []
    assert dataset.split_episodes(1, 0.5, seed=0) == ([0], [])
    with pytest.raises(dataset.ConfigError, match='val-fraction'):
        dataset.split_episodes(4, 1.0, seed=0)


def test_episode_inputs_are_what_the_engine_sees_and_targets_the_recorded_labels(bags):
    config = PolicyConfig.from_dict(TINY)
    node = NodeConfig()
    pre = Preprocessor(config.preprocess, 'cpu', torch.float32)
    path = bags / 'episode_0001'
    episode = dataset.load_episode(path, config, node, pre)
    images, poses, labels = {}, {}, {}
    with BagInput(path, node, ['/expert/action']) as bag:
        for event in bag.events():
            if event.kind == 'image':
                images[event.value.stamp_ns] = event.value
            elif event.kind == 'pose':
                poses[event.value.stamp_ns] = event.value
            elif event.kind == 'extra':
                labels[event.value.header.stamp.sec * 10**9 + event.value.header.stamp.nanosec] \
                    = np.asarray(event.value.data)
    # every image that has an action at or before it (all but the final one) is a sample
    assert len(episode) == len(images) - 1 == len(labels)
    assert episode.action_names == list(ACTION_NAMES)
    for i, stamp in enumerate(episode.stamps):
        expected = pre([image_to_array(images[stamp])])  # (1, 3, 32, 32)
        torch.testing.assert_close(episode.pixels[i], expected, rtol=0, atol=0)
        np.testing.assert_allclose(episode.position[i, 0].numpy(), poses[stamp].position,
                                   atol=1e-6)  # the sim publishes a pose at each image stamp
        for h in range(4):
            t = stamp + h * 100 * MS
            assert bool(episode.mask[i, h]) == (t in labels)
            if t in labels:
                np.testing.assert_allclose(episode.actions[i, h].numpy(), labels[t], atol=1e-7)


def test_normalization_stats_match_the_data_and_pin_constant_actions(bags):
    config = PolicyConfig.from_dict(TINY)
    episodes = dataset.load_episodes(dataset.find_bags([bags]), config, NodeConfig(),
                                     progress=False)
    stats = dataset.normalization_stats(episodes)
    actions = torch.cat([e.actions[e.mask] for e in episodes]).double()
    np.testing.assert_allclose(stats['action_mean'], actions.mean(0).numpy(), atol=1e-9)
    moving = [ACTION_NAMES.index(n) for n in ('dx', 'dy', 'dz')]
    np.testing.assert_allclose(np.array(stats['action_std'])[moving],
                               actions.std(0, unbiased=False).numpy()[moving], rtol=1e-9)
    fixed = [ACTION_NAMES.index(n) for n in ('drx', 'dry', 'drz', 'gripper')]
    assert [stats['action_std'][i] for i in fixed] == [dataset.CONSTANT_ACTION_STD] * 4
    # the gripper never turns: its 6D rotation features only jitter, and are not scaled up
    assert stats['pose_std'][3:] == [dataset.POSE_STD_FLOOR] * 6
    assert min(stats['pose_std'][:3]) > dataset.POSE_STD_FLOOR and len(stats['pose_mean']) == 9


# ----------------------------------------------------------------------------- training ---

def test_lr_schedule_warms_up_then_decays_to_zero():
    assert train.lr_at(0, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert train.lr_at(9, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert train.lr_at(10, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert train.lr_at(55, 100, 1.0, 0.1) == pytest.approx(0.5)
    assert train.lr_at(100, 100, 1.0, 0.1) == pytest.approx(0.0)


def test_random_shift_moves_all_cameras_of_a_sample_together():
    pixels = torch.arange(2 * 2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 2, 3, 6, 6)
    assert torch.equal(train.random_shift(pixels, 0, torch.Generator()), pixels)
    shifted = train.random_shift(pixels, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == pixels.shape
    padded = torch.nn.functional.pad(pixels.flatten(1, 2), (2, 2, 2, 2), mode='replicate')
    for b in range(2):
        windows = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(padded[b, :, dy:dy + 6, dx:dx + 6],
                                  shifted[b].flatten(0, 1))]
        assert len(windows) == 1  # one shift for all 6 channels (2 cameras x 3)


def test_masked_loss_ignores_masked_steps():
    pred = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, False]])
    assert train.masked_loss(pred, target, mask, 'l1').item() == pytest.approx(2.0)
    assert train.masked_loss(pred, target, mask, 'mse').item() == pytest.approx(5.0)


def test_training_lowers_the_loss_and_saves_a_loadable_checkpoint(bags, config_file, tmp_path,
                                                                  capsys):
    out = tmp_path / 'ckpt'
    assert train_cli(bags, out, config_file, '--epochs', '15', '--lr', '5e-3',
                     '--val-fraction', '0.34') == 0
    printed = capsys.readouterr().out
    assert 'val MAE' in printed and 'mean-baseline' in printed
    state = json.loads((out / 'trainer_state.json').read_text())
    losses = [h['train_loss'] for h in state['history']]
    assert state['epoch'] == 15 and len(losses) == 15
    assert losses[-1] < 0.8 * losses[0]
    assert len(state['val_episodes']) == 1 and len(state['train_episodes']) == 2
    policy, info = load_checkpoint(out)
    assert policy.config.actions.names == list(ACTION_NAMES)
    assert policy.config.backbone.hidden_size == 16
    config = PolicyConfig.from_dict(TINY)
    train_episodes = [dataset.load_episode(p, config, NodeConfig(),
                                           Preprocessor(config.preprocess))
                      for p in state['train_episodes']]
    expected = dataset.normalization_stats(train_episodes)
    for key, values in policy.normalization().items():
        np.testing.assert_allclose(values, expected[key], rtol=1e-6, atol=1e-7)
    assert info['epochs_done'] == 15 and info['train_episodes'] == 2
    assert len(info['val_mae']) == len(info['val_baseline_mae']) == 7
    assert (out / 'optimizer.safetensors').is_file()


def test_same_seed_same_weights_other_seed_other_weights(bags, config_file, tmp_path):
    for name, seed in (('a', '1'), ('b', '1'), ('c', '2')):
        assert train_cli(bags, tmp_path / name, config_file, '--epochs', '2',
                         '--seed', seed) == 0
    a, b, c = (weights(tmp_path / n) for n in 'abc')
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_ctrl_c_continues_from_the_saved_epoch_exactly(bags, config_file, tmp_path,
                                                                    monkeypatch, capsys):
    assert train_cli(bags, tmp_path / 'straight', config_file, '--epochs', '4') == 0
    save = train.save_trainer_state

    def interrupt_after_epoch_2(directory, optimizer, state):
        save(directory, optimizer, state)
        if state['epoch'] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, 'save_trainer_state', interrupt_after_epoch_2)
    assert train_cli(bags, tmp_path / 'split', config_file, '--epochs', '4') == 0
    assert 'interrupted' in capsys.readouterr().err
    state = json.loads((tmp_path / 'split' / 'trainer_state.json').read_text())
    assert state['epoch'] == 2
    first = weights(tmp_path / 'split')
    monkeypatch.setattr(train, 'save_trainer_state', save)
    # options (epochs 4, batch 8, shift 2) come from trainer_state.json
    assert cli.main(['train', str(bags), '--out', str(tmp_path / 'split'), '--resume',
                     str(tmp_path / 'split')]) == 0
    state = json.loads((tmp_path / 'split' / 'trainer_state.json').read_text())
    assert state['epoch'] == 4 and [h['epoch'] for h in state['history']] == [1, 2, 3, 4]
    assert state['options']['augment_shift'] == 2 and state['options']['batch_size'] == 8
    straight, resumed = weights(tmp_path / 'straight'), weights(tmp_path / 'split')
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not all(torch.equal(first[k], resumed[k]) for k in first)


def test_save_every_writes_every_nth_epoch_and_the_last_with_the_same_weights(
        bags, config_file, tmp_path, monkeypatch):
    save, saved = train.save_trainer_state, []

    def record(directory, optimizer, state):
        saved.append(state['epoch'])
        save(directory, optimizer, state)

    monkeypatch.setattr(train, 'save_trainer_state', record)
    assert train_cli(bags, tmp_path / 'every', config_file, '--epochs', '5') == 0
    assert saved == [1, 2, 3, 4, 5]
    saved.clear()
    assert train_cli(bags, tmp_path / 'sparse', config_file, '--epochs', '5',
                     '--save-every', '2') == 0
    assert saved == [2, 4, 5]  # every 2nd epoch, and the last
    saved.clear()
    assert train_cli(bags, tmp_path / 'final', config_file, '--epochs', '5',
                     '--save-every', '9') == 0
    assert saved == [5]
    state = json.loads((tmp_path / 'sparse' / 'trainer_state.json').read_text())
    assert state['epoch'] == 5 and [h['epoch'] for h in state['history']] == [1, 2, 3, 4, 5]
    assert state['options']['save_every'] == 2
    _, info = load_checkpoint(tmp_path / 'final')
    assert info['epochs_done'] == 5 and len(info['val_mae']) == 7
    every = weights(tmp_path / 'every')  # the cadence does not touch the math
    for name in ('sparse', 'final'):
        other = weights(tmp_path / name)
        assert all(torch.equal(every[k], other[k]) for k in every)


def test_resume_with_save_every_continues_from_the_last_checkpoint_written(
        bags, config_file, tmp_path, monkeypatch, capsys):
    assert train_cli(bags, tmp_path / 'straight', config_file, '--epochs', '5') == 0
    save, lr_at, armed = train.save_trainer_state, train.lr_at, []

    def arm_after_epoch_2(directory, optimizer, state):
        save(directory, optimizer, state)
        armed.append(state['epoch'] == 2)

    def interrupt_in_epoch_3(*args):
        if armed and armed[-1]:
            raise KeyboardInterrupt  # the first step after the epoch-2 checkpoint
        return lr_at(*args)

    monkeypatch.setattr(train, 'save_trainer_state', arm_after_epoch_2)
    monkeypatch.setattr(train, 'lr_at', interrupt_in_epoch_3)
    assert train_cli(bags, tmp_path / 'split', config_file, '--epochs', '5',
                     '--save-every', '2') == 0
    assert 'interrupted' in capsys.readouterr().err
    assert json.loads((tmp_path / 'split' / 'trainer_state.json').read_text())['epoch'] == 2
    monkeypatch.setattr(train, 'save_trainer_state', save)
    monkeypatch.setattr(train, 'lr_at', lr_at)
    assert cli.main(['train', str(bags), '--out', str(tmp_path / 'split'), '--resume',
                     str(tmp_path / 'split')]) == 0
    state = json.loads((tmp_path / 'split' / 'trainer_state.json').read_text())
    assert state['epoch'] == 5 and state['options']['save_every'] == 2
    straight, resumed = weights(tmp_path / 'straight'), weights(tmp_path / 'split')
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_random_shift_equals_the_gather_it_replaced():
    pixels = torch.rand(5, 2, 3, 7, 9)
    shifted = train.random_shift(pixels, 3, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)  # the index-tensor gather of 31929e3
    padded = torch.nn.functional.pad(pixels.flatten(1, 2), (3, 3, 3, 3), mode='replicate')
    dy = torch.randint(0, 7, (5,), generator=generator)
    dx = torch.randint(0, 7, (5,), generator=generator)
    rows = (dy[:, None] + torch.arange(7))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(9))[:, None, None, :]  # (B, 1, 1, W)
    channels = torch.arange(6)[None, :, None, None]  # (1, C*3, 1, 1)
    gathered = padded[torch.arange(5)[:, None, None, None], channels, rows, cols]
    assert torch.equal(shifted, gathered.unflatten(1, (2, 3)))


def test_foreach_adamw_updates_equal_the_per_tensor_loop():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((4, 3), (3,), (2, 2, 2))]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    looped = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, foreach=False)
    fused = torch.optim.AdamW(copies, lr=1e-3, weight_decay=1e-2, foreach=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(params, copies):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        looped.step()
        fused.step()
    assert all(torch.equal(a, b) for a, b in zip(params, copies))


def test_ablated_images_train_on_zeros_and_say_so(bags, config_file, tmp_path):
    assert train_cli(bags, tmp_path / 'ablated', config_file, '--epochs', '1',
                     '--ablate-images') == 0
    policy, info = load_checkpoint(tmp_path / 'ablated')
    assert info['ablate_images'] is True
    assert policy.config.ablate_images is True  # the model itself ignores its images
    cams = len(policy.config.cameras)
    size = policy.config.preprocess.output_size
    position, quat = torch.tensor([[0.4, 0.0, 0.3]]), torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    with torch.no_grad():
        _, dark = policy(torch.zeros(1, cams, 3, *size), position, quat)
        _, noise = policy(torch.randn(1, cams, 3, *size), position, quat)
        policy.config.ablate_images = False
        _, seen = policy(torch.randn(1, cams, 3, *size), position, quat)
    assert torch.equal(dark, noise)
    assert not torch.equal(dark, seen)


def one_line_error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_inputs_are_one_line_errors(bags, config_file, tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    line = one_line_error(capsys, ['train', str(tmp_path / 'empty'), '--out', str(tmp_path)])
    assert line.startswith('vit-perception train: error: no bags found in')
    line = one_line_error(capsys, ['train', '--out', str(tmp_path / 'x')])
    assert 'no bags given' in line
    line = one_line_error(capsys, ['train', str(bags), '--out', str(tmp_path / 'x'),
                                   '--config', str(config_file), '--action-topic', '/nope'])
    assert 'topic /nope not in the bag' in line and '/expert/action' in line
    line = one_line_error(capsys, ['train', str(bags), '--out', str(tmp_path / 'x'),
                                   '--set', 'backbone.hiden_size=8'])
    assert "unknown config key 'backbone.hiden_size'" in line
    line = one_line_error(capsys, ['train', str(bags), '--out', str(tmp_path / 'x'),
                                   '--save-every', '0'])
    assert '--save-every 0: expected >= 1' in line
    line = one_line_error(capsys, ['train', str(bags), '--out', str(tmp_path / 'x'),
                                   '--resume', str(tmp_path / 'empty')])
    assert 'trainer_state.json is missing' in line


# ------------------------------------------------------------------------ output safety ---

def test_out_at_a_file_fails_before_any_epoch(bags, config_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dataset, 'load_episodes', lambda *a, **k: pytest.fail('data loaded'))
    target = tmp_path / 'file'
    target.write_text('not a directory')
    line = one_line_error(capsys, ['train', str(bags), '--out', str(target),
                                   '--config', str(config_file)])
    assert line == f'vit-perception train: error: {target}: is a file; expected a checkpoint ' \
        'directory to write'
    assert target.read_text() == 'not a directory'


def test_an_existing_checkpoint_is_kept_unless_overwrite(bags, config_file, tmp_path, capsys):
    out = tmp_path / 'ckpt'
    assert train_cli(bags, out, config_file, '--epochs', '1', '--seed', '1') == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_line_error(capsys, ['train', str(bags), '--out', str(out),
                                   '--config', str(config_file), '--epochs', '1'])
    assert line.endswith('holds a checkpoint already; choose a new directory or pass '
                         '--overwrite')
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert train_cli(bags, out, config_file, '--epochs', '1', '--seed', '2',
                     '--overwrite') == 0
    after = weights(out)
    assert not all(torch.equal(after[k], v) for k, v in weights_from(before).items())
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary left


def weights_from(files: dict) -> dict:
    from safetensors.torch import load

    return load(files['model.safetensors'])


def test_a_failed_save_leaves_the_previous_files_and_no_temporary(tmp_path, monkeypatch):
    import safetensors.torch

    from vit_perception.model import checkpoint
    from vit_perception.model.config import tiny_config
    from vit_perception.model.policy import build_policy

    policy = build_policy(tiny_config())
    out = checkpoint.save_checkpoint(policy, tmp_path / 'ckpt')
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(state, filename, metadata=None):
        Path(filename).write_bytes(b'partial')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(safetensors.torch, 'save_file', disk_full)
    with pytest.raises(OSError, match='No space left'):
        checkpoint.save_checkpoint(policy, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(OSError, match='No space left'):
        checkpoint.save_checkpoint(policy, tmp_path / 'new')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt']  # nothing half-made


# ------------------------------------------------------- two arms + joint states, replayed ---

JOINTS = ['left_waist', 'left_gripper', 'right_waist', 'right_gripper']
BIMANUAL = {**TINY, 'pose': {'num_tokens': 1, 'arms': ['left', 'right'],
                             'proprio_names': JOINTS},
            'actions': {'horizon': 4, 'dt': 0.1, 'names': [f'{j}_target' for j in JOINTS]}}
BIMANUAL_NODE = ('topics:\n  poses: [/left/pose, /right/pose]\n'
                 'engine:\n  dtype: fp32\n  device: cpu\n  warmup_iters: 0\n')


def joint_values(t_s: float, seed: int) -> list[float]:
    """The recorded joint positions of JOINTS at time t (linear in t)."""
    return [0.5 * t_s + seed, -0.2 * t_s, 0.3 - 0.1 * t_s, 0.05 * seed + 0.4 * t_s]


def write_bimanual_bag(path, seed: int, frames: int = 10) -> None:
    """Images at 10 Hz from 1.0 s; each arm's PoseStamped and /joint_states (with an unused
    joint, in another order) at 50 Hz from 0.99 s, so the image stamps fall halfway between
    samples; /expert/action = the joint positions 0.1 s ahead."""
    from vit_perception.drivers import ros_types as rt
    from vit_perception.tools.sim.record import BagWriter

    rng = np.random.default_rng(seed)
    with BagWriter(path) as bag:
        for k in range(5 * frames + 2):
            stamp = 990 * MS + k * 20 * MS
            t = stamp / 1e9
            for topic, sign in (('/left/pose', 1.0), ('/right/pose', -1.0)):
                bag(topic, rt.POSE_STAMPED, stamp, rt.pose_msg(
                    stamp, 'world', [sign * 0.1 * t, 0.2 + 0.01 * seed, 0.3], [0, 0, 0, 1]))
            values = joint_values(t, seed)
            bag('/joint_states', rt.JOINT_STATE, stamp, rt.joint_state_msg(
                stamp, ['head', *reversed(JOINTS)], [9.0, *reversed(values)]))
        for i in range(frames):
            stamp = 1000 * MS + i * 100 * MS
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            bag('/camera/image_raw', rt.IMAGE, stamp, rt.image_msg(stamp, 'cam', pixels, 'rgb8'))
            bag('/expert/action', rt.ACTION_CHUNK, stamp, rt.action_chunk_msg(
                stamp, BIMANUAL['actions']['names'], 0.1,
                [joint_values(stamp / 1e9 + 0.1, seed)], stamp))


@pytest.fixture(scope='module')
def bimanual(tmp_path_factory):
    root = tmp_path_factory.mktemp('bimanual')
    for seed in range(2):
        write_bimanual_bag(root / 'bags' / f'episode_{seed}', seed)
    (root / 'policy.json').write_text(json.dumps(BIMANUAL))
    (root / 'node.yaml').write_text(BIMANUAL_NODE)
    return root


def test_two_arm_episodes_hold_both_poses_and_the_joint_states_at_the_image_stamps(bimanual):
    from vit_perception.config import load_node_config

    config = PolicyConfig.from_dict(BIMANUAL)
    node = load_node_config(bimanual / 'node.yaml')
    pre = Preprocessor(config.preprocess, 'cpu', torch.float32)
    episode = dataset.load_episode(bimanual / 'bags' / 'episode_1', config, node, pre)
    assert len(episode) == 10 and episode.dropped == {}
    t = episode.stamps / 1e9  # 1.0, 1.1, ... 1.9 s: halfway between two joint/pose samples
    assert episode.position.shape == (10, 2, 3) and episode.quat.shape == (10, 2, 4)
    np.testing.assert_allclose(episode.position[:, 0, 0], 0.1 * t, atol=1e-6)
    np.testing.assert_allclose(episode.position[:, 1, 0], -0.1 * t, atol=1e-6)
    np.testing.assert_allclose(episode.proprio, [joint_values(s, 1) for s in t], atol=1e-6)
    stats = dataset.normalization_stats([episode])
    assert len(stats['pose_mean']) == 2 * 9 + 4  # every arm's features, then the joints
    np.testing.assert_allclose(stats['pose_mean'][18:], np.mean(episode.proprio.numpy(), 0),
                               atol=1e-6)


def test_bags_without_the_configured_joints_or_arms_are_one_line_errors(bimanual, tmp_path):
    from vit_perception.config import load_node_config

    pre = Preprocessor(PolicyConfig.from_dict(BIMANUAL).preprocess, 'cpu', torch.float32)
    node = load_node_config(bimanual / 'node.yaml')
    renamed = PolicyConfig.from_dict({**BIMANUAL, 'pose': {
        **BIMANUAL['pose'], 'proprio_names': ['left_waist', 'elbow']}})
    episode = dataset.load_episode(bimanual / 'bags' / 'episode_0', renamed, node, pre)
    assert len(episode) == 0  # 52 JointStates lack 'elbow': 10 images without joint states
    assert episode.dropped == {'bad_joint_state': 52, 'no_joint_state': 10}
    with pytest.raises(dataset.BagError, match=r'no observation pairs .*bad_joint_state x52'):
        dataset.load_episodes([bimanual / 'bags' / 'episode_0'], renamed, node, progress=False)
    with pytest.raises(dataset.ConfigError, match='topics.poses has 1 topics, the policy '
                       'expects 2'):
        dataset.load_episode(bimanual / 'bags' / 'episode_0', PolicyConfig.from_dict(BIMANUAL),
                             NodeConfig(), pre)


def test_two_arm_joint_state_policy_trains_and_replays_what_it_trained_on(bimanual, tmp_path):
    from vit_perception.config import load_node_config
    from vit_perception.drivers import ros_types as rt

    out = tmp_path / 'ckpt'
    assert cli.main(['train', str(bimanual / 'bags'), '--out', str(out), '--config',
                     str(bimanual / 'policy.json'), '--node-config',
                     str(bimanual / 'node.yaml'), '--epochs', '2', '--batch-size', '8',
                     '--val-fraction', '0']) == 0
    policy, _ = load_checkpoint(out)
    assert policy.config.pose.arms == ['left', 'right']
    assert policy.pose_tokenizer.arm_embed.shape == (2, 1, 16)
    assert len(policy.normalization()['pose_mean']) == 22
    bag = bimanual / 'bags' / 'episode_0'
    replayed = tmp_path / 'replayed'
    assert cli.main(['replay', str(bag), '--model', str(out), '--config',
                     str(bimanual / 'node.yaml'), '--out', str(replayed)]) == 0
    chunks = {}
    with Reader(replayed) as reader:
        connections = [c for c in reader.connections if c.topic == '/vit_perception/action_chunk']
        for _, _, raw in reader.messages(connections):
            data = rt.chunk_from_msg(rt.deserialize(raw, rt.ACTION_CHUNK))
            chunks[data.observation_stamp_ns] = data.chunk
    pre = Preprocessor(policy.config.preprocess, 'cpu', torch.float32)
    node = load_node_config(bimanual / 'node.yaml')
    episode = dataset.load_episode(bag, policy.config, node, pre)
    assert sorted(chunks) == episode.stamps.tolist()  # every observation, the same stamps
    with torch.no_grad():
        _, expected = policy.eval()(episode.pixels, episode.position, episode.quat,
                                    episode.proprio)
        expected = policy.actions_from_normalized(expected).numpy()  # (N, H, A)
    for i, stamp in enumerate(episode.stamps):
        np.testing.assert_allclose(chunks[stamp], expected[i], rtol=0, atol=1e-4)


def _experiment_script():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / 'scripts' / 'pretrain_experiment.py'
    spec = importlib.util.spec_from_file_location('pretrain_experiment', path)
    experiment = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = experiment  # its dataclasses look their module up there
    spec.loader.exec_module(experiment)
    return experiment


def test_experiment_closed_loop_sets_a_contaminated_run_aside_and_reruns_it(tmp_path,
                                                                            monkeypatch):
    experiment = _experiment_script()
    runs, foreign = [], [600, 0]  # the first demo was driven by a foreign publisher

    def fake_demo(argv):
        assert argv[:3] == ['demo', '--task', 'aloha-transfer-cube']
        report = Path(argv[argv.index('--report') + 1])
        (report / 'bags').mkdir(parents=True)
        episodes = [{'success': i < 7 - len(runs), 'lift': i < 8, 'touch': i < 9}
                    for i in range(10)]
        (report / 'sim.json').write_text(json.dumps({'episodes': episodes}))
        runs.append(report)

    monkeypatch.setattr(experiment, 'run_cli', fake_demo)
    monkeypatch.setattr(experiment, 'foreign_actions', lambda bags: foreign.pop(0))
    aloha = experiment.TASKS['aloha-transfer-cube']
    result = experiment.closed_loop(aloha, tmp_path, 'b10_s0_scratch', 10)
    seconds = result.pop('closed_loop_seconds')
    assert result == {'success': 6, 'lift': 8, 'touch': 9,  # the second run's counts
                      'closed_loop_episodes': 10}
    assert isinstance(seconds, float)  # the demo ran: its wall time is kept
    foreign.append(0)
    recount = experiment.closed_loop(aloha, tmp_path, 'b10_s0_scratch', 10)
    assert recount == result and len(runs) == 2  # its report counted again: no demo, no time
    assert [p.name.startswith('b10_s0_scratch_contaminated_') for p in
            sorted((tmp_path / 'demo').iterdir())] == [False, True]
    monkeypatch.setattr(experiment, 'foreign_actions', lambda bags: 1)
    with pytest.raises(RuntimeError, match='3 closed-loop runs in a row were void'):
        experiment.closed_loop(aloha, tmp_path, 'b10_s1_scratch', 10)


def test_experiment_schedule_caps_epochs_alike_for_every_arm():
    schedule = _experiment_script().schedule
    assert schedule(638, 64, 1200) == (120, 10)  # the reach grid: 1200 steps at 50 episodes
    assert schedule(128, 64, 1200) == (600, 2)
    assert schedule(128, 64, 1200, max_epochs=100) == (100, 2)
    assert schedule(800, 32, 2500, max_epochs=40) == (40, 25)  # ALOHA, 10 episodes
    assert schedule(4000, 32, 2500, max_epochs=40) == (20, 125)  # ALOHA, 50 episodes: uncapped
    assert schedule(10, 64, 1) == (1, 1)


def test_experiment_work_directory_keeps_its_task_and_table_columns(tmp_path):
    experiment = _experiment_script()
    work = tmp_path / 'w'
    assert experiment.task_of(work, 'aloha-transfer-cube') == 'aloha-transfer-cube'
    assert experiment.task_of(work, None) == 'aloha-transfer-cube'  # WORK/task.json
    with pytest.raises(SystemExit, match='holds the aloha-transfer-cube experiment'):
        experiment.task_of(work, 'reach')
    (tmp_path / 'old' / 'runs').mkdir(parents=True)  # a grid from before task.json: reach
    assert experiment.task_of(tmp_path / 'old', None) == 'reach'
    aloha = experiment.TASKS['aloha-transfer-cube']
    mae = [0.01] * 7 + [0.03] * 7
    rows = [{'task': aloha.name, 'budget': 10, 'seed': seed, 'arm': 'scratch',
             'train_samples': 800, 'val_mae': [m + 0.01 * seed for m in mae],
             'baseline_mae': [0.2] * 7 + [0.4] * 7, 'success': seed, 'lift': 2 + seed,
             'touch': 5, 'closed_loop_episodes': 10}
            for seed in (0, 1)]
    lines = experiment.table(aloha, rows, {}).splitlines()
    assert lines[0].startswith('| labeled episodes | arm | seeds | left arm | right arm | mean |')
    assert lines[0].endswith('| closed-loop success (lift / touch) |')
    assert lines[2] == ('| 10 (800 samples) | scratch | 0,1 | 0.0150 ± 0.0071 | 0.0350 ± 0.0071 '
                        '| 0.0250 ± 0.0071 | 0.2000 / 0.4000 / 0.3000 | 1/20 (5 / 10) |')
    del rows[1]['touch']  # a run whose closed loop predates the count: not in the cell
    assert experiment.table(aloha, rows, {}).splitlines()[2].endswith('| 0/10 (2 / 5) |')


def test_experiment_claims_a_run_once_and_takes_over_a_dead_claim(tmp_path):
    import os
    import subprocess

    claim = _experiment_script().claim
    assert claim(tmp_path, 'b10_s0_scratch') is True
    assert (tmp_path / 'claims' / 'b10_s0_scratch').read_text() == str(os.getpid())
    assert claim(tmp_path, 'b10_s0_scratch') is False  # held by a live process (this one)
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / 'claims' / 'b10_s1_scratch').write_text(dead)
    assert claim(tmp_path, 'b10_s1_scratch') is True
    assert (tmp_path / 'claims' / 'b10_s1_scratch').read_text() == str(os.getpid())


def test_experiment_closed_loop_only_never_records_or_pretrains(tmp_path, monkeypatch):
    """It runs beside training invocations: a second pretraining into the same directory once
    started from it (its arms default to all, which need the pretrained encoders)."""
    experiment = _experiment_script()

    def forbidden(*args, **kwargs):
        raise AssertionError('recorded or pretrained')

    monkeypatch.setattr(experiment, 'record', forbidden)
    monkeypatch.setattr(experiment, 'pretrain_all', forbidden)
    monkeypatch.setattr(experiment, 'write_recipe', forbidden)
    monkeypatch.setattr(sys, 'argv', ['pretrain_experiment.py', '--work', str(tmp_path / 'w'),
                                      '--task', 'aloha-transfer-cube', '--closed-loop-only',
                                      '--closed-loop', '10'])
    assert experiment.main() == 0
    assert sorted(p.name for p in (tmp_path / 'w').iterdir()) == ['task.json']
