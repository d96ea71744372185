"""LeRobot itself reads a dataset we exported and trains one step of ACT on it.

Runs inside the Python 3.12 venv that scripts/check_lerobot.sh builds (lerobot 0.6.1), never in
the project's env:

    python check_lerobot.py DATASET_DIR [--dump FRAMES.npz]
    python check_lerobot.py DIR --write-reference     # a dataset written by LeRobot's writer

1. `LeRobotDataset(root=DATASET_DIR, video_backend='pyav')` loads it (metadata, parquet, video);
   its totals must equal info.json's, and every frame's item must carry the camera images
   (3, H, W), observation.state and action with the shapes info.json declares.
2. `--dump` writes what LeRobot returned for every frame (state, action, timestamp, indices,
   uint8 images) so the project's test compares it with the bags it came from.
3. One optimizer step of a tiny ACT policy (random-init ResNet-18, no downloads) on a batch
   from a DataLoader with ACT's action-chunk delta_timestamps; the loss must be finite.
Prints one JSON line; exit code 0 only when every check passed.

DIR --write-reference records a small dataset with LeRobot's own writer (LeRobotDataset.create,
add_frame, save_episode, finalize) from the values `reference_frame` defines (--dump saves
them), so the project's test reads it with its own reader and compares (the other direction).
"""

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from lerobot.configs import FeatureType
from lerobot.datasets import LeRobotDataset
from lerobot.policies import make_pre_post_processors
from lerobot.policies.act import ACTConfig, ACTPolicy
from lerobot.utils.feature_utils import dataset_to_policy_features

REPO_ID = 'local/vit_perception_export'


def load_and_check(root: str) -> tuple[LeRobotDataset, dict]:
    with open(f'{root}/meta/info.json') as f:
        info = json.load(f)
    ds = LeRobotDataset(REPO_ID, root=root, video_backend='pyav')
    assert ds.meta.info.codebase_version == 'v3.0', ds.meta.info.codebase_version
    assert ds.num_episodes == info['total_episodes'], (ds.num_episodes, info['total_episodes'])
    assert ds.num_frames == info['total_frames'] == len(ds), (ds.num_frames, len(ds))
    assert ds.fps == info['fps']
    cameras = ds.meta.camera_keys
    assert cameras, 'no camera features'
    frames = {key: [] for key in ['observation.state', 'action', 'timestamp', 'episode_index',
                                  'frame_index', 'index', *cameras]}
    for i in range(len(ds)):
        item = ds[i]
        for key in cameras:
            height, width, channels = info['features'][key]['shape']
            image = item[key]
            assert tuple(image.shape) == (channels, height, width), (key, image.shape)
            assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
            frames[key].append((image * 255).round().to(torch.uint8).numpy())
        for key in ('observation.state', 'action'):
            assert tuple(item[key].shape) == tuple(info['features'][key]['shape']), key
            frames[key].append(item[key].numpy())
        for key in ('timestamp', 'episode_index', 'frame_index', 'index'):
            frames[key].append(item[key].numpy())
        assert isinstance(item['task'], str) and item['task'], item.get('task')
    return ds, {key: np.stack(values) for key, values in frames.items()}


def train_one_step(root: str, ds: LeRobotDataset) -> float:
    features = dataset_to_policy_features(ds.meta.features)
    outputs = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in features.items() if k not in outputs}
    config = ACTConfig(input_features=inputs, output_features=outputs, chunk_size=4,
                       n_action_steps=4, dim_model=32, n_heads=2, dim_feedforward=64,
                       n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1,
                       pretrained_backbone_weights=None, device='cpu')
    torch.manual_seed(0)
    policy = ACTPolicy(config)
    policy.train()
    preprocessor, _ = make_pre_post_processors(config, dataset_stats=ds.meta.stats)
    delta = {'action': [i / ds.fps for i in config.action_delta_indices]}
    chunked = LeRobotDataset(REPO_ID, root=root, video_backend='pyav', delta_timestamps=delta)
    loader = torch.utils.data.DataLoader(chunked, batch_size=min(8, len(chunked)),
                                         shuffle=True, drop_last=True)
    optimizer = config.get_optimizer_preset().build(policy.parameters())
    batch = preprocessor(next(iter(loader)))
    assert tuple(batch['action'].shape[1:]) == (4, len(ds.meta.features['action']['names']))
    loss, _ = policy.forward(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return float(loss.item())


REFERENCE_EPISODES = (5, 7)  # frames per episode
REFERENCE_FPS = 15


def reference_frame(episode: int, i: int) -> dict:
    """Frame i of reference episode `episode`; the project's test rebuilds the same values."""
    y, x = np.mgrid[0:32, 0:48]
    image = np.stack([5 * x, 7 * y, np.full_like(x, 20 * i + 60 * episode)], axis=2)
    angle = 0.1 * i
    state = [0.3 + 0.01 * i, -0.1 * episode, 0.2, 0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2),
             0.5]
    return {'observation.images.top': image.astype(np.uint8),
            'observation.state': np.array(state, dtype=np.float32),
            'action': np.array([i, -i, episode], dtype=np.float32)}


def write_reference(root: str) -> dict[str, np.ndarray]:
    features = {
        'observation.images.top': {'dtype': 'video', 'shape': (32, 48, 3),
                                   'names': ['height', 'width', 'channels']},
        'observation.state': {'dtype': 'float32', 'shape': (8,),
                              'names': ['x', 'y', 'z', 'qx', 'qy', 'qz', 'qw', 'gripper']},
        'action': {'dtype': 'float32', 'shape': (3,), 'names': ['vx', 'vy', 'grip']},
    }
    ds = LeRobotDataset.create(REPO_ID, fps=REFERENCE_FPS, features=features, root=root,
                               robot_type='reference', use_videos=True)
    written = {key: [] for key in features}
    for episode, length in enumerate(REFERENCE_EPISODES):
        for i in range(length):
            frame = reference_frame(episode, i)
            for key, value in frame.items():
                written[key].append(value)
            ds.add_frame(frame | {'task': 'reach the puck'})
        ds.save_episode()
    ds.finalize()
    return {key: np.stack(values) for key, values in written.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root')
    parser.add_argument('--dump', default=None)
    parser.add_argument('--write-reference', action='store_true',
                        help='write a LeRobot-made dataset into ROOT instead of checking one')
    args = parser.parse_args()
    if args.write_reference:
        written = write_reference(args.root)
        if args.dump:
            np.savez(args.dump, **written)
        print(json.dumps({'ok': True, 'written': args.root, 'fps': REFERENCE_FPS,
                          'frames': len(written['action'])}))
        return 0
    started = time.perf_counter()
    ds, frames = load_and_check(args.root)
    if args.dump:
        np.savez(args.dump, **frames)
    loss = train_one_step(args.root, ds)
    ok = math.isfinite(loss)
    print(json.dumps({'ok': ok, 'episodes': ds.num_episodes, 'frames': ds.num_frames,
                      'fps': ds.fps, 'cameras': ds.meta.camera_keys, 'act_loss': loss,
                      'seconds': round(time.perf_counter() - started, 1)}))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
