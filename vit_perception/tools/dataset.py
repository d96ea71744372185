"""Behavior-cloning data from ROS 2 bags, built exactly as the node sees its inputs.

Per bag (one episode): BagInput events (the node's input routes: images, every arm's pose, the
joint states when the checkpoint reads them) in log-time order -> the node's ObservationBuilder
(same SyncConfig: each input interpolated to the image stamp, skew/age checks, latest-only) ->
the engine's
Preprocessor -> (C, 3, H, W) float32 tensors, cached in memory once. Targets: for an observation
at stamp s, step h of the (H, A) chunk is the recorded action in effect at s + h * dt (the
nearest previous message on the action topic). Steps past the last recorded action are padded
with it and masked out of the loss; observations before the first action are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vit_perception.config import NodeConfig
from vit_perception.core.types import NS_PER_S
from vit_perception.errors import BagError, ConfigError
from vit_perception.model.config import PolicyConfig

DEFAULT_ACTION_TOPIC = '/expert/action'
ACTION_CHUNK = 'vit_perception/msg/ActionChunk'
BAG_SUFFIXES = ('.mcap', '.db3')
CONSTANT_ACTION_STD = 1e-6
POSE_STD_FLOOR = 1e-2


@dataclass
class Episode:
    """The training samples of one bag (N observations)."""

    name: str
    pixels: object  # torch.Tensor (N, C, 3, H, W) float32, preprocessed like the engine does
    position: object  # torch.Tensor (N, arms, 3) float32
    quat: object  # torch.Tensor (N, arms, 4) float32, xyzw
    proprio: object  # torch.Tensor (N, P) float32: pose.proprio_names (P may be 0)
    actions: object  # torch.Tensor (N, H, A) float32, robot units
    mask: object  # torch.Tensor (N, H) bool: the step lies within the recording
    stamps: np.ndarray  # (N,) int64 observation stamps
    action_names: list[str]
    dropped: dict[str, int]  # observations the builder dropped, by reason

    def __len__(self) -> int:
        return len(self.stamps)


def find_bags(paths: Iterable[str | Path]) -> list[Path]:
    """Bags named or contained (recursively) in `paths`, sorted per argument.

    A bag is a directory with metadata.yaml, or a .mcap / .db3 file not inside such a directory.
    Raises BagError when a path does not exist or no bag is found at all.
    """
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise BagError(f'{path}: not found; expected a bag (rosbag2 directory, .mcap, .db3) '
                           'or a directory of bags')
        found.extend(_bags_under(path))
    if not found:
        listed = ', '.join(str(p) for p in paths) or 'nothing'
        raise BagError(f'no bags found in {listed}: expected rosbag2 directories '
                       '(metadata.yaml), .mcap or .db3 files')
    return list(dict.fromkeys(found))


def _bags_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix in BAG_SUFFIXES else []
    if (path / 'metadata.yaml').is_file():
        return [path]
    bags = []
    for child in sorted(path.iterdir()):
        if child.is_dir() or child.suffix in BAG_SUFFIXES:
            bags.extend(_bags_under(child))
    return bags


def chunk_targets(obs_stamps: np.ndarray, action_stamps: np.ndarray, actions: np.ndarray,
                  horizon: int, dt_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) observation stamps, (M,) sorted action stamps, (M, A) actions -> targets, mask.

    targets (N, H, A): the action in effect at s + h * dt (the last one stamped <= that time);
    mask (N, H): True where s + h * dt is within [first action, last action] stamps. Masked steps
    hold the nearest valid action (padding).
    """
    obs_stamps = np.asarray(obs_stamps, dtype=np.int64)
    action_stamps = np.asarray(action_stamps, dtype=np.int64)
    times = obs_stamps[:, None] + np.arange(horizon, dtype=np.int64)[None, :] * dt_ns  # (N, H)
    index = np.searchsorted(action_stamps, times, side='right') - 1  # (N, H)
    mask = (index >= 0) & (times <= action_stamps[-1])
    targets = np.asarray(actions)[np.clip(index, 0, len(action_stamps) - 1)]  # (N, H, A)
    return targets.astype(np.float32), mask


class ActionReader:
    """Collects the ActionChunk messages of one topic: stamps (M,), actions (M, A), names.

    Uses the header stamp (when the first step applies) and step 0 of each chunk.
    """

    def __init__(self, path: Path, topic: str):
        self.path, self.topic = path, topic
        self.stamps: list[int] = []
        self.rows: list[np.ndarray] = []
        self.names: list[str] | None = None

    def add(self, msg) -> None:
        from vit_perception.drivers import ros_types

        try:
            data = ros_types.chunk_from_msg(msg)
        except ConfigError as err:
            raise BagError(f'{self.path}: {self.topic}: {err}') from None
        if self.names is None:
            self.names = data.names
        elif data.names != self.names:
            raise BagError(f'{self.path}: {self.topic} changes its action names from '
                           f'{self.names} to {data.names}; expected one action space per bag')
        self.stamps.append(data.stamp_ns)
        self.rows.append(data.chunk[0])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(M,) sorted stamps and (M, A) actions; BagError if there were none."""
        if not self.stamps:
            raise BagError(f'{self.path}: topic {self.topic} has no readable ActionChunk '
                           'messages')
        stamps = np.asarray(self.stamps, dtype=np.int64)
        order = np.argsort(stamps, kind='stable')
        return stamps[order], np.asarray(self.rows, dtype=np.float32)[order]


def load_episode(path: str | Path, policy_config: PolicyConfig, node_config: NodeConfig,
                 preprocessor, action_topic: str = DEFAULT_ACTION_TOPIC) -> Episode:
    """One bag -> an Episode (see module docstring). Raises BagError / ConfigError (one line)."""
    import torch

    samples = bag_samples(path, policy_config, node_config, action_topic)
    observations = samples.observations
    pixels = observation_pixels(observations, preprocessor, policy_config)  # (N, C, 3, H, W)
    arms, joints = len(policy_config.pose.arms), len(policy_config.pose.proprio_names)

    def tensor(values, *shape):  # (N, *shape) float32
        return torch.tensor(np.array(values, dtype=np.float64).reshape(len(observations),
                                                                       *shape),
                            dtype=torch.float32)

    return Episode(
        name=str(path), pixels=pixels,
        position=tensor([[p.position for p in o.poses] for o in observations], arms, 3),
        quat=tensor([[p.orientation for p in o.poses] for o in observations], arms, 4),
        proprio=tensor([o.proprio for o in observations], joints),
        actions=torch.from_numpy(samples.targets), mask=torch.from_numpy(samples.mask),
        stamps=samples.stamps, action_names=samples.action_names, dropped=samples.dropped)


@dataclass
class BagSamples:
    """The training samples of one bag before preprocessing (N observations kept)."""

    observations: list  # core Observation: raw frames + every input at the image stamp
    targets: np.ndarray  # (N, H, A) float32
    mask: np.ndarray  # (N, H) bool
    stamps: np.ndarray  # (N,) int64
    action_names: list[str]
    dropped: dict[str, int]


def bag_samples(path: str | Path, policy_config: PolicyConfig, node_config: NodeConfig,
                action_topic: str = DEFAULT_ACTION_TOPIC) -> BagSamples:
    """One bag -> its samples: observations as the node builds them, paired with chunk targets.

    Observations with no action recorded at or before them are skipped.
    """
    from vit_perception.drivers.bag import BagInput

    _check_inputs(policy_config, node_config)
    horizon = policy_config.actions.horizon
    dt_ns = int(round(policy_config.actions.dt * NS_PER_S))
    with BagInput(path, node_config, extra_topics=[action_topic],
                  proprio_names=policy_config.pose.proprio_names) as bag:
        if bag.topics[action_topic] != ACTION_CHUNK:
            raise BagError(f'{bag.path}: topic {action_topic} has type '
                           f'{bag.topics[action_topic]}, expected {ACTION_CHUNK}')
        reader = ActionReader(Path(path), action_topic)
        observations, dropped = read_observations(
            bag, node_config, policy_config,
            lambda event: reader.add(event.value) if event.topic == action_topic else None)
    action_stamps, actions = reader.arrays()
    names = reader.names

    stamps = np.array([o.stamp_ns for o in observations], dtype=np.int64)
    if len(stamps):
        targets, mask = chunk_targets(stamps, action_stamps, actions, horizon, dt_ns)
        keep = mask[:, 0]  # a target for step 0, i.e. an action recorded at or before the image
    else:
        targets = np.zeros((0, horizon, len(names)), np.float32)
        mask = np.zeros((0, horizon), bool)
        keep = np.zeros(0, bool)
    observations = [o for o, k in zip(observations, keep) if k]
    return BagSamples(observations, targets[keep], mask[keep], stamps[keep], list(names), dropped)


def _check_inputs(policy_config: PolicyConfig, node_config: NodeConfig) -> None:
    """ConfigError when the node's camera or pose topics and the policy disagree."""
    topics = node_config.topics
    for name, have, want in (('cameras', topics.cameras, policy_config.cameras),
                             ('poses', topics.poses, policy_config.pose.arms)):
        if len(have) != len(want):
            raise ConfigError(f'node config topics.{name} has {len(have)} topics, the policy '
                              f'expects {len(want)} ({", ".join(want)})')


def read_observations(bag, node_config: NodeConfig, policy_config: PolicyConfig, on_extra=None):
    """Replay an open BagInput through the node's ObservationBuilder -> (observations, drops:
    the builder's and the messages that did not convert, by reason).

    `on_extra(event)` receives the events of the bag's extra topics (e.g. recorded actions).
    """
    from vit_perception.core.observation import ObservationBuilder

    builder = ObservationBuilder(node_config.sync, len(policy_config.cameras),
                                 num_arms=len(policy_config.pose.arms),
                                 num_joints=len(policy_config.pose.proprio_names))
    inputs = {'image': builder.add_image, 'pose': builder.add_pose,
              'joints': builder.add_joints}  # the kinds of drivers/routes.CORE_INPUTS
    observations = []
    now = 0
    for event in bag.events():
        now = event.log_time_ns
        builder.check_clock(now)
        if event.kind in inputs:
            inputs[event.kind](event.value, now)
        else:
            if event.kind == 'bad':  # a message its route could not convert: counted
                builder.drops.add(event.value[0])
            elif event.kind == 'extra' and on_extra is not None:
                on_extra(event)
            continue
        obs = builder.take(now)
        if obs is not None:
            observations.append(obs)
    obs = builder.take(now + int(node_config.sync.max_pose_skew * NS_PER_S) + 1)
    if obs is not None:
        observations.append(obs)
    return observations, builder.drops.counts()


def observation_pixels(observations, preprocessor, policy_config: PolicyConfig):
    """Observations -> (N, C, 3, H, W) float32, preprocessed as the engine does."""
    import torch

    from vit_perception.core.images import image_to_array

    if not observations:
        return torch.zeros((0, len(policy_config.cameras), 3,
                            *policy_config.preprocess.output_size))
    return torch.stack([preprocessor([image_to_array(f) for f in o.frames])
                        for o in observations]).float()


def load_frames(bags: Sequence[Path], policy_config: PolicyConfig, node_config: NodeConfig,
                progress: bool = True):
    """Every camera frame the node would turn into an observation (no actions needed), as
    (M, 3, H, W) float32 preprocessed exactly as for training; BagError when there are none."""
    import torch

    from vit_perception.core.preprocess import Preprocessor
    from vit_perception.drivers.bag import BagInput

    _check_inputs(policy_config, node_config)
    preprocessor = Preprocessor(policy_config.preprocess, torch.device('cpu'), torch.float32)
    frames = []
    for path in progress_bar(bags, progress, 'reading bags'):
        with BagInput(path, node_config, proprio_names=policy_config.pose.proprio_names) as bag:
            observations, dropped = read_observations(bag, node_config, policy_config)
        if not observations:
            reasons = ', '.join(f'{r} x{n}' for r, n in dropped.items()) or 'none'
            raise BagError(f'{path}: no camera frame pairs with a pose (drops: {reasons}); '
                           'check topics and sync settings')
        pixels = observation_pixels(observations, preprocessor, policy_config)
        frames.append(pixels.flatten(0, 1))  # (N * C, 3, H, W): every camera's frame
    return torch.cat(frames)


def load_episodes(bags: Sequence[Path], policy_config: PolicyConfig, node_config: NodeConfig,
                  action_topic: str = DEFAULT_ACTION_TOPIC, progress: bool = True
                  ) -> list[Episode]:
    """Every bag -> Episode (same action names required); bags without samples are an error."""
    import torch

    from vit_perception.core.preprocess import Preprocessor

    preprocessor = Preprocessor(policy_config.preprocess, torch.device('cpu'), torch.float32)
    episodes = []
    for path in progress_bar(bags, progress, 'reading bags'):
        episode = load_episode(path, policy_config, node_config, preprocessor, action_topic)
        if episodes and episode.action_names != episodes[0].action_names:
            raise BagError(f'{path}: action names {episode.action_names} differ from '
                           f'{episodes[0].action_names} in {episodes[0].name}; expected one '
                           'action space')
        if len(episode) == 0:
            reasons = ', '.join(f'{r} x{n}' for r, n in episode.dropped.items()) or 'none'
            raise BagError(f'{path}: no observation pairs an image with a pose and an action '
                           f'(drops: {reasons}); check topics and sync settings')
        episodes.append(episode)
    return episodes


def split_episodes(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Episode indices -> (train, val), split by episode with a seeded shuffle.

    At least one training episode; at least one validation episode when val_fraction > 0 and
    there are two or more episodes.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f'--val-fraction {val_fraction}: expected 0 <= F < 1')
    rng = np.random.default_rng(seed)
    order = rng.permutation(count).tolist()
    num_val = int(round(val_fraction * count))
    if val_fraction > 0 and count >= 2:
        num_val = min(max(num_val, 1), count - 1)
    else:
        num_val = 0
    return sorted(order[num_val:]), sorted(order[:num_val])


def normalization_stats(episodes: Sequence[Episode]) -> dict:
    """pose_mean/pose_std (pose_features of the observations: every arm's, then the proprio
    scalars) and action_mean/action_std (the unmasked chunk steps) of `episodes`."""
    import torch

    from vit_perception.model.pose import pose_features

    position = torch.cat([e.position for e in episodes])  # (N, arms, 3)
    quat = torch.cat([e.quat for e in episodes])  # (N, arms, 4)
    proprio = torch.cat([e.proprio for e in episodes])  # (N, P)
    features = pose_features(position.double(), quat.double(), proprio.double())  # (N, F)
    actions = torch.cat([e.actions[e.mask] for e in episodes]).double()  # (M, A)

    def std(x):
        return x.std(dim=0, unbiased=False) if len(x) > 1 else torch.zeros(x.shape[1])

    # Pose features (metres, rotation-matrix entries) varying less than POSE_STD_FLOOR are
    # sensor noise: scaling them up would feed the noise to the model. A constant action
    # dimension gets a tiny std, so the model outputs exactly the demonstrated constant.
    action_std = std(actions)
    action_std = torch.where(action_std < CONSTANT_ACTION_STD,
                             torch.full_like(action_std, CONSTANT_ACTION_STD), action_std)
    return {'pose_mean': features.mean(0).tolist(),
            'pose_std': std(features).clamp_min(POSE_STD_FLOOR).tolist(),
            'action_mean': actions.mean(0).tolist(), 'action_std': action_std.tolist()}


def progress_bar(items, enabled: bool, desc: str, unit: str = 'bag'):
    """`items`, with a progress bar on terminals when `enabled`."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False, disable=None)  # None: terminals only
