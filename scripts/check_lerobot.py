"""LeRobot itself reads a dataset we exported and trains one step of ACT on it.

Runs inside the Python 3.12 venv that scripts/check_lerobot.sh builds (lerobot 0.6.1), never in
the project's env:

    python check_lerobot.py DATASET_DIR [--dump FRAMES.npz]

1. `LeRobotDataset(root=DATASET_DIR, video_backend='pyav')` loads it (metadata, parquet, video);
   its totals must equal info.json's, and every frame's item must carry the camera images
   (3, H, W), observation.state and action with the shapes info.json declares.
2. `--dump` writes what LeRobot returned for every frame (state, action, timestamp, indices,
   uint8 images) so the project's test compares it with the bags it came from.
3. One optimizer step of a tiny ACT policy (random-init ResNet-18, no downloads) on a batch
   from a DataLoader with ACT's action-chunk delta_timestamps; the loss must be finite.
Prints one JSON line; exit code 0 only when every check passed.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root')
    parser.add_argument('--dump', default=None)
    args = parser.parse_args()
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
