"""LeRobotDataset v3.0 both ways: read one as training episodes, write our bags as one.

Every fact about the format lives in this module. They are taken from LeRobot's own writer and
reader (lerobot 0.6.1: src/lerobot/datasets/utils.py, dataset_metadata.py, dataset_writer.py,
compute_stats.py, video_utils.py, io_utils.py) and checked against LeRobot itself by
scripts/check_lerobot.sh. A dataset is one directory:

    meta/info.json            codebase_version 'v3.0', fps, features, totals, path templates
    meta/stats.json           per feature: min max mean std count q01 q10 q50 q90 q99
    meta/tasks.parquet        task (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, frame range, data
                              and video file indices, video time range, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet            one row per frame: the non-video features +
                              timestamp frame_index episode_index index task_index
    videos/<key>/chunk-000/file-000.mp4        per camera: every episode's frames back to back

Frame i of an episode has timestamp i / fps; its video frame sits at from_timestamp + timestamp
of the episode's video file. What maps to what (README "LeRobot"): a video or image feature
`observation.images.<camera>` is our camera; `observation.state` dimensions named x y z qx qy
qz qw are the end-effector pose (joint positions follow, by joint name); `action` is the action
vector, its names our action names. Reading needs the `lerobot` extra (pyarrow, av).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from vit_perception.config import NodeConfig
from vit_perception.core.types import NS_PER_S
from vit_perception.errors import ConfigError, DatasetError
from vit_perception.model.config import PolicyConfig
from vit_perception.schema import from_dict
from vit_perception.tools import dataset

CODEBASE_VERSION = 'v3.0'
INFO_PATH = 'meta/info.json'
STATS_PATH = 'meta/stats.json'
TASKS_PATH = 'meta/tasks.parquet'
EPISODES_DIR = 'meta/episodes'
CHUNK_FILE = 'chunk-{chunk_index:03d}/file-{file_index:03d}'
EPISODES_PATH = EPISODES_DIR + '/' + CHUNK_FILE + '.parquet'
DATA_PATH = 'data/' + CHUNK_FILE + '.parquet'
VIDEO_PATH = 'videos/{video_key}/' + CHUNK_FILE + '.mp4'
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200

IMAGE_PREFIX = 'observation.images.'
STATE = 'observation.state'
ACTION = 'action'
# Columns LeRobot adds to every dataset (lerobot.utils.constants.DEFAULT_FEATURES).
DEFAULT_FEATURES = {
    'timestamp': {'dtype': 'float32', 'shape': [1], 'names': None},
    'frame_index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'episode_index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'task_index': {'dtype': 'int64', 'shape': [1], 'names': None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # stats keys q01 q10 q50 q90 q99
# LeRobot's default tolerance between a frame's timestamp and the video frame / fps grid.
TOLERANCE_S = 1e-4
# Export: image stamps may sit this fraction of a frame period off the fps grid (camera jitter).
GRID_JITTER = 0.25
POSE_NAMES = ('x', 'y', 'z', 'qx', 'qy', 'qz', 'qw')


@dataclass
class VideoEncoding:
    """How cameras are encoded (LeRobot's VideoEncoderConfig defaults: AV1, yuv420p, GOP 2)."""

    vcodec: str = 'libsvtav1'
    pix_fmt: str = 'yuv420p'
    g: int = 2
    crf: int = 30

    @property
    def preset(self) -> int | None:
        """LeRobot sets SVT-AV1's fastest preset (12) and leaves other codecs at theirs."""
        return 12 if self.vcodec == 'libsvtav1' else None

    def options(self) -> dict[str, str]:
        """Codec options as LeRobot passes them to PyAV."""
        options = {'g': str(self.g), 'crf': str(self.crf)}
        if self.preset is not None:
            options['preset'] = str(self.preset)
        return options

    def info(self) -> dict:
        """The `video.*` encoder entries LeRobot records in a video feature's info."""
        return {'video.g': self.g, 'video.crf': self.crf, 'video.preset': self.preset,
                'video.fast_decode': 0, 'video.video_backend': 'pyav', 'video.extra_options': {}}


@dataclass
class LeRobotMapping:
    """Which features of a LeRobot dataset feed the policy (train --lerobot-map FILE)."""

    # One feature key per policy camera, in the policy's camera order; empty =
    # 'observation.images.<camera name>' for each of the policy's `cameras`.
    cameras: list[str] = field(default_factory=list)
    # The vector feature holding the end-effector pose.
    state: str = STATE
    # Names of `state` dimensions: position x y z (metres) and orientation, either a quaternion
    # (4 names, x y z w order) or roll pitch yaw (3 names, radians, extrinsic x-y-z).
    position: list[str] = field(default_factory=lambda: list(POSE_NAMES[:3]))
    orientation: list[str] = field(default_factory=lambda: list(POSE_NAMES[3:]))
    # The vector feature holding the demonstrated action; its names become the action names.
    action: str = ACTION

    def __post_init__(self):
        if len(self.position) != 3:
            raise ConfigError(f'lerobot map position={self.position}: expected 3 state names '
                              '(x y z)')
        if len(self.orientation) not in (3, 4):
            raise ConfigError(f'lerobot map orientation={self.orientation}: expected 4 state '
                              'names (quaternion x y z w) or 3 (roll pitch yaw)')


def load_mapping(path: str | Path | None) -> LeRobotMapping:
    """LeRobotMapping from a YAML/JSON file (None: the defaults); ConfigError names bad keys."""
    import yaml

    if path is None:
        return LeRobotMapping()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f'{path}: lerobot map file not found') from None
    except yaml.YAMLError as err:
        raise ConfigError(f'{path}: not valid YAML ({str(err).splitlines()[0]})') from None
    return from_dict(LeRobotMapping, data, 'lerobot map')


def is_dataset(path: str | Path) -> bool:
    """A LeRobot dataset is a directory with meta/info.json."""
    return (Path(path) / INFO_PATH).is_file()


# ------------------------------------------------------------------------------- reading ---

def read_info(root: Path) -> dict:
    """meta/info.json, checked: version v3.0, integer fps > 0, features with dtype and shape."""
    path = root / INFO_PATH
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f'{path}: not readable JSON ({err})') from None
    if not isinstance(info, dict):
        raise DatasetError(f'{path}: expected a JSON object')
    version = info.get('codebase_version')
    if version != CODEBASE_VERSION:
        raise DatasetError(f'{path}: codebase_version {version!r}, expected {CODEBASE_VERSION!r}'
                           ' (convert older datasets with LeRobot: python -m '
                           'lerobot.scripts.convert_dataset_v21_to_v30)')
    fps = info.get('fps')
    if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
        raise DatasetError(f'{path}: fps {fps!r}, expected a positive integer')
    features = info.get('features')
    if not isinstance(features, dict):
        raise DatasetError(f'{path}: features missing, expected a mapping of feature keys')
    for key, feature in features.items():
        if not isinstance(feature, dict) or 'dtype' not in feature or \
                not isinstance(feature.get('shape'), list):
            raise DatasetError(f'{path}: feature {key!r} needs a dtype and a shape list')
    missing = [key for key in DEFAULT_FEATURES if key not in features]
    if missing:
        raise DatasetError(f'{path}: features lack {missing}, which every LeRobot dataset has')
    for key in ('data_path', 'total_episodes'):
        if key not in info:
            raise DatasetError(f'{path}: {key} missing')
    return info


def feature_names(info: dict, key: str) -> list[str]:
    """The per-dimension names of a vector feature (LeRobot allows a list or {'axes': list});
    `key_0`, `key_1`, ... when the dataset names none."""
    feature = info['features'][key]
    names = feature.get('names')
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    size = int(np.prod(feature['shape']))
    if isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names):
        return list(names)
    return [f'{key}_{i}' for i in range(size)]


def read_table(paths: Sequence[Path], columns: Sequence[str], what: str) -> dict[str, list]:
    """Columns of the parquet files `paths` (concatenated) as Python lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as err:
            raise DatasetError(f'{path}: not a readable parquet file ({err})') from None
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DatasetError(f'{path}: {what} lacks columns {missing}')
        tables.append(table.select(list(columns)))
    if not tables:
        raise DatasetError(f'no {what} parquet files found')
    table = pa.concat_tables(tables)
    return {name: table.column(name).to_pylist() for name in columns}


def episode_table(root: Path, info: dict, video_keys: Sequence[str]) -> list[dict]:
    """The rows of meta/episodes/*/*.parquet that locate each episode, sorted by index."""
    columns = ['episode_index', 'length', 'dataset_from_index', 'dataset_to_index',
               'data/chunk_index', 'data/file_index']
    for key in video_keys:
        columns += [f'videos/{key}/chunk_index', f'videos/{key}/file_index',
                    f'videos/{key}/from_timestamp']
    paths = sorted((root / EPISODES_DIR).glob('*/*.parquet'))
    if not paths:
        raise DatasetError(f'{root / EPISODES_DIR}: no episode parquet files '
                           '(chunk-000/file-000.parquet)')
    table = read_table(paths, columns, 'the episode table')
    rows = [dict(zip(columns, values)) for values in zip(*table.values())]
    rows.sort(key=lambda row: row['episode_index'])
    if len(rows) != info['total_episodes']:
        raise DatasetError(f'{root / EPISODES_DIR}: {len(rows)} episodes, info.json says '
                           f"total_episodes {info['total_episodes']}")
    return rows


def load_episodes(root: str | Path, policy_config: PolicyConfig, mapping: LeRobotMapping,
                  preprocessor, node_config: NodeConfig | None = None,
                  progress: bool = True) -> list[dataset.Episode]:
    """A LeRobot dataset -> one dataset.Episode per episode, the structure bags give.

    Pixels go through the engine's preprocessor; the pose comes from the mapped state
    dimensions (a quaternion off unit norm by more than sync.quaternion_tolerance, or a
    non-finite pose, drops the frame, counted like the node counts it); targets come from the
    action column with dataset.chunk_targets on the episode's fps grid.
    """
    import torch

    root = Path(root)
    node_config = node_config or NodeConfig()
    if policy_config.pose.proprio_names or len(policy_config.pose.arms) > 1:
        raise ConfigError(f'pose.arms={policy_config.pose.arms}, pose.proprio_names='
                          f'{policy_config.pose.proprio_names}: LeRobot datasets are read as one '
                          'arm without proprio scalars; train on bags for more')
    info = read_info(root)
    features, fps = info['features'], info['fps']
    cameras = mapping.cameras or [IMAGE_PREFIX + name for name in policy_config.cameras]
    if len(cameras) != len(policy_config.cameras):
        raise ConfigError(f'lerobot map cameras={cameras}: expected one feature per policy '
                          f'camera {policy_config.cameras}')
    for key, kinds in [(k, ('video', 'image')) for k in cameras] + [
            (mapping.state, None), (mapping.action, None)]:
        if key not in features:
            listed = ', '.join(k for k in features if k not in DEFAULT_FEATURES)
            raise DatasetError(f'{root}: no feature {key!r}; the dataset has: {listed} (map '
                               'features with train --lerobot-map FILE)')
        dtype = features[key]['dtype']
        if kinds and dtype not in kinds:
            raise DatasetError(f'{root}: feature {key!r} has dtype {dtype!r}, expected a camera '
                               '(video or image)')
        if not kinds and (dtype not in ('float32', 'float64') or
                          len(features[key]['shape']) != 1):
            raise DatasetError(f'{root}: feature {key!r} is {dtype} {features[key]["shape"]}, '
                               'expected a float vector')
    state_names = feature_names(info, mapping.state)
    wanted = mapping.position + mapping.orientation
    missing = [name for name in wanted if name not in state_names]
    if missing:
        raise DatasetError(f'{root}: {mapping.state} has no dimensions named {missing} (it has '
                           f'{state_names}); name the pose dimensions with --lerobot-map')
    pose_index = [state_names.index(name) for name in wanted]
    action_names = feature_names(info, mapping.action)
    video_keys = [k for k in cameras if features[k]['dtype'] == 'video']
    if video_keys and not info.get('video_path'):
        raise DatasetError(f'{root / INFO_PATH}: video features {video_keys} but no video_path')
    episodes_meta = episode_table(root, info, video_keys)
    image_keys = [k for k in cameras if features[k]['dtype'] == 'image']
    columns = ['index', 'episode_index', 'frame_index', 'timestamp', mapping.state,
               mapping.action] + image_keys
    data_files = sorted({(row['data/chunk_index'], row['data/file_index'])
                         for row in episodes_meta})
    frames = read_table([root / info['data_path'].format(chunk_index=c, file_index=f)
                         for c, f in data_files], columns, 'the frame table')
    by_episode: dict[int, list[int]] = {}
    for row, episode_index in enumerate(frames['episode_index']):
        by_episode.setdefault(episode_index, []).append(row)

    horizon = policy_config.actions.horizon
    ticks_per_frame = 1000  # chunk_targets on an exact grid: 1 tick = 1 / (1000 fps) s
    dt_ticks = int(round(policy_config.actions.dt * fps * ticks_per_frame))
    videos = _VideoFiles(root, info, TOLERANCE_S)
    episodes = []
    try:
        for meta in dataset.progress_bar(episodes_meta, progress, 'reading episodes',
                                             'episode'):
            index = meta['episode_index']
            rows = sorted(by_episode.get(index, []), key=lambda r: frames['frame_index'][r])
            name = f'{root}#episode_{index}'
            if len(rows) != meta['length']:
                raise DatasetError(f'{name}: {len(rows)} frames in data/, the episode table '
                                   f"says length {meta['length']}")
            timestamps = np.array([frames['timestamp'][r] for r in rows], dtype=np.float64)
            grid = np.round(timestamps * fps).astype(np.int64)  # frame slots on the fps grid
            off = np.abs(timestamps - grid / fps)
            if len(rows) and (off.max() > TOLERANCE_S or np.any(np.diff(grid) <= 0)):
                raise DatasetError(f'{name}: timestamps are not increasing multiples of 1/fps '
                                   f'(fps {fps}, tolerance {TOLERANCE_S} s)')
            state = _vectors([frames[mapping.state][r] for r in rows], len(state_names),
                             f'{name}: {mapping.state}')
            actions = _vectors([frames[mapping.action][r] for r in rows], len(action_names),
                               f'{name}: {mapping.action}')
            bad = np.flatnonzero(~np.isfinite(actions).all(1))
            if len(bad):
                raise DatasetError(f'{name}: {mapping.action} is NaN/inf at frames '
                                   f'{bad[:5].tolist()}; expected finite demonstrations')
            position = state[:, pose_index[:3]]
            quat, ok, dropped = _orientation(state[:, pose_index[3:]], position,
                                             node_config.sync.quaternion_tolerance)
            images = [videos.frames(key, meta, timestamps) if key in video_keys
                      else _image_column([frames[key][r] for r in rows], f'{name}: {key}')
                      for key in cameras]  # per camera: N DecodedImages
            keep = np.flatnonzero(ok)
            ticks = grid * ticks_per_frame
            targets, mask = dataset.chunk_targets(ticks[keep], ticks, actions, horizon,
                                                  dt_ticks)
            pixels = torch.stack([preprocessor([camera[i] for camera in images])
                                  for i in keep]) if len(keep) else torch.zeros(
                (0, len(cameras), 3, *policy_config.preprocess.output_size))  # (N, C, 3, H, W)
            episodes.append(dataset.Episode(
                name=name, pixels=pixels.float(),
                position=torch.from_numpy(position[keep, None].astype(np.float32)),  # (N, 1, 3)
                quat=torch.from_numpy(quat[keep, None].astype(np.float32)),  # (N, 1, 4)
                proprio=torch.zeros(len(keep), 0),
                actions=torch.from_numpy(targets), mask=torch.from_numpy(mask),
                stamps=np.round(grid[keep] * NS_PER_S / fps).astype(np.int64),
                action_names=list(action_names), dropped=dropped))
    finally:
        videos.close()
    return episodes


def _vectors(values: list, size: int, where: str) -> np.ndarray:
    """Parquet list cells -> (N, size) float64; DatasetError on a wrong length."""
    try:
        array = np.array(values, dtype=np.float64).reshape(len(values), -1)
    except (TypeError, ValueError):
        raise DatasetError(f'{where}: cells of unequal length or non-numeric') from None
    if array.shape[1] != size and len(values):
        raise DatasetError(f'{where}: {array.shape[1]} values per frame, the feature shape '
                           f'says {size}')
    return array


def _orientation(values: np.ndarray, position: np.ndarray, tolerance: float):
    """(N, 4) xyzw or (N, 3) roll pitch yaw -> unit quaternions (N, 4), valid mask, drops."""
    if values.shape[1] == 3:
        values = quat_from_rpy(values)
    norm = np.linalg.norm(values, axis=1)
    finite = np.isfinite(values).all(1) & np.isfinite(position).all(1)
    ok = finite & (np.abs(norm - 1.0) <= tolerance)
    dropped = {}
    if np.any(~finite):
        dropped['pose_nonfinite'] = int(np.sum(~finite))
    if np.any(finite & ~ok):
        dropped['pose_bad_quaternion'] = int(np.sum(finite & ~ok))
    quat = np.where(ok[:, None], values / np.where(norm > 0, norm, 1.0)[:, None], 0.0)
    return quat, ok, dropped


def quat_from_rpy(rpy: np.ndarray) -> np.ndarray:
    """(N, 3) roll pitch yaw (extrinsic x-y-z, i.e. R = Rz(yaw) Ry(pitch) Rx(roll)) -> (N, 4)
    quaternions x y z w."""
    half = np.asarray(rpy, dtype=np.float64) / 2.0
    cr, cp, cy = np.cos(half).T
    sr, sp, sy = np.sin(half).T
    return np.stack([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy], axis=1)


def _image_column(cells: list, where: str) -> list:
    """LeRobot 'image' cells ({'bytes': PNG/JPEG, 'path': ...}) -> DecodedImages."""
    from vit_perception.core.images import image_to_array
    from vit_perception.core.types import ImageFrame
    from vit_perception.errors import ImageError

    images = []
    for cell in cells:
        data = cell.get('bytes') if isinstance(cell, dict) else None
        if not data:
            raise DatasetError(f'{where}: an image cell holds no bytes (images stored as paths '
                               'are not supported)')
        try:
            images.append(image_to_array(ImageFrame(0, '', data, format='png')))
        except ImageError as err:
            raise DatasetError(f'{where}: {err}') from None
    return images


class _VideoFiles:
    """Decodes the frames of an episode from its camera's video file (PyAV), as LeRobot's
    pyav backend does: seek to the keyframe before the first timestamp, decode forward, take
    the frame nearest each timestamp (within `tolerance` seconds)."""

    def __init__(self, root: Path, info: dict, tolerance: float):
        self.root, self.info, self.tolerance = root, info, tolerance
        self._open: dict[Path, object] = {}

    def frames(self, key: str, meta: dict, timestamps: np.ndarray) -> list:
        import av

        from vit_perception.core.images import DecodedImage

        if not len(timestamps):
            return []
        path = self.root / self.info['video_path'].format(
            video_key=key, chunk_index=meta[f'videos/{key}/chunk_index'],
            file_index=meta[f'videos/{key}/file_index'])
        queries = meta[f'videos/{key}/from_timestamp'] + timestamps
        try:
            container = self._open.get(path) or self._open.setdefault(path, av.open(str(path)))
            stream = container.streams.video[0]
            container.seek(max(int(round(queries[0] / stream.time_base)) - 1, 0),
                           backward=True, any_frame=False, stream=stream)
            decoded, times = [], []
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                times.append(float(frame.pts * stream.time_base))
                decoded.append(frame.to_ndarray(format='rgb24'))  # (H, W, 3) uint8
                if times[-1] >= queries[-1] - self.tolerance:
                    break
        except (OSError, IndexError, av.FFmpegError) as err:
            raise DatasetError(f'{path}: cannot decode the video ({err})') from None
        times = np.asarray(times)
        nearest = np.abs(queries[:, None] - times[None, :]).argmin(1) if len(times) else None
        if nearest is None or np.any(np.abs(times[nearest] - queries) > self.tolerance):
            raise DatasetError(f'{path}: no video frame within {self.tolerance} s of the '
                               f'episode timestamps {queries[0]:.4f}..{queries[-1]:.4f} s '
                               f'(episode {meta["episode_index"]})')
        return [DecodedImage(decoded[i], 'rgb') for i in nearest]

    def close(self) -> None:
        for container in self._open.values():
            container.close()
        self._open.clear()


# ------------------------------------------------------------------------------- writing ---

@dataclass
class ExportedEpisode:
    """One episode to write: N frames on the fps grid."""

    images: list[np.ndarray]  # per camera: (N, H, W, 3) uint8 RGB
    state: np.ndarray  # (N, S) float32
    action: np.ndarray  # (N, A) float32
    task: str


class DatasetWriter:
    """Writes a LeRobotDataset v3.0 directory, one episode at a time; `close` writes meta/.

    Everything goes into chunk-000/file-000 files (data, episodes, one video per camera), which
    LeRobot reads at any size; LeRobot itself rolls files over at 100 MB (data) / 200 MB
    (video), which is a matter of file size only.
    """

    def __init__(self, root: str | Path, fps: int, cameras: Sequence[str],
                 state_names: Sequence[str], action_names: Sequence[str],
                 encoding: VideoEncoding = VideoEncoding(), robot_type: str | None = None):
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise DatasetError(f'{self.root} exists and is not empty: expected a new dataset '
                               'directory')
        self.fps, self.encoding, self.robot_type = int(fps), encoding, robot_type
        self.camera_keys = [IMAGE_PREFIX + name for name in cameras]
        self.state_names, self.action_names = list(state_names), list(action_names)
        self._videos: dict[str, object] = {}
        self._columns: dict[str, list] = {}
        self._episodes: list[dict] = []
        self._tasks: dict[str, int] = {}
        self._frames = 0
        self._camera_shapes: dict[str, tuple[int, int, int]] = {}
        self._image_stats: dict[str, list[dict]] = {}  # per camera: each episode's stats

    def add(self, episode: ExportedEpisode) -> None:
        """Append one episode (frames, video frames, its row of the episode table)."""
        count = len(episode.state)
        if not count:
            return
        index = len(self._episodes)
        task_index = self._tasks.setdefault(episode.task, len(self._tasks))
        frame_index = np.arange(count, dtype=np.int64)
        columns = {
            STATE: episode.state.astype(np.float32), ACTION: episode.action.astype(np.float32),
            'timestamp': (frame_index / self.fps).astype(np.float32), 'frame_index': frame_index,
            'episode_index': np.full(count, index, np.int64),
            'index': np.arange(self._frames, self._frames + count, dtype=np.int64),
            'task_index': np.full(count, task_index, np.int64)}
        for key, values in columns.items():
            self._columns.setdefault(key, []).append(values)
        row = {'episode_index': index, 'tasks': [episode.task], 'length': count,
               'data/chunk_index': 0, 'data/file_index': 0,
               'dataset_from_index': self._frames, 'dataset_to_index': self._frames + count}
        for key, frames in zip(self.camera_keys, episode.images):
            start = self._encode(key, frames, self._frames)
            row.update({f'videos/{key}/chunk_index': 0, f'videos/{key}/file_index': 0,
                        f'videos/{key}/from_timestamp': start / self.fps,
                        f'videos/{key}/to_timestamp': (start + count) / self.fps})
        stats = {key: feature_stats(values) for key, values in columns.items()}
        for key, frames in zip(self.camera_keys, episode.images):
            stats[key] = image_stats(frames)
            self._image_stats.setdefault(key, []).append(stats[key])
        for key, values in stats.items():
            for stat, value in values.items():
                row[f'stats/{key}/{stat}'] = value.tolist()
        row.update({'meta/episodes/chunk_index': 0, 'meta/episodes/file_index': 0})
        self._episodes.append(row)
        self._frames += count

    def _encode(self, key: str, frames: np.ndarray, start: int) -> int:
        """Append `frames` (N, H, W, 3) to the camera's video; returns the first frame's slot."""
        import av

        shape = frames.shape[1:]
        if self._camera_shapes.setdefault(key, shape) != shape:
            raise DatasetError(f"{key}: image size {shape[:2]} differs from the first episode's "
                               f'{self._camera_shapes[key][:2]}; expected one size per camera')
        if key not in self._videos:
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault('SVT_LOG', '1')  # SVT-AV1 prints its banner unless told
            container = av.open(str(path), 'w')
            stream = container.add_stream(self.encoding.vcodec, self.fps,
                                          options=self.encoding.options())
            stream.pix_fmt, stream.height, stream.width = self.encoding.pix_fmt, *shape[:2]
            self._videos[key] = (container, stream)
        container, stream = self._videos[key]
        for offset, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format='rgb24')
            frame.pts, frame.time_base = start + offset, Fraction(1, self.fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        return start

    def abort(self) -> None:
        """Close the video files without finishing the dataset."""
        for container, _ in self._videos.values():
            container.close()
        self._videos.clear()

    def close(self) -> dict:
        """Flush the videos and write data/, meta/; returns info.json's contents."""
        import pyarrow as pa

        for container, stream in self._videos.values():
            for packet in stream.encode():
                container.mux(packet)
            container.close()
        if not self._episodes:
            raise DatasetError(f'{self.root}: no frames to write')
        features = self.features()
        columns = {key: np.concatenate(values) for key, values in self._columns.items()}
        arrays = {}
        for key, values in columns.items():
            if values.ndim == 2:
                arrays[key] = pa.FixedSizeListArray.from_arrays(
                    pa.array(values.reshape(-1)), values.shape[1])
            else:
                arrays[key] = pa.array(values)
        table = pa.table(arrays).replace_schema_metadata({'huggingface': json.dumps(
            {'info': {'features': _hf_features(features)}})})
        _write_parquet(table, self.root / DATA_PATH.format(chunk_index=0, file_index=0))
        _write_parquet(pa.Table.from_pylist(self._episodes),
                       self.root / EPISODES_PATH.format(chunk_index=0, file_index=0))
        _write_parquet(_tasks_table(self._tasks), self.root / TASKS_PATH)
        stats = {key: feature_stats(values) for key, values in columns.items()}
        stats.update({key: aggregate_stats(self._image_stats[key]) for key in self.camera_keys})
        _write_json(self.root / STATS_PATH, {key: {stat: value.tolist() for stat, value in
                                                   values.items()}
                                             for key, values in stats.items()})
        info = {'codebase_version': CODEBASE_VERSION, 'fps': self.fps, 'features': features,
                'total_episodes': len(self._episodes), 'total_frames': self._frames,
                'total_tasks': len(self._tasks), 'chunks_size': CHUNKS_SIZE,
                'data_files_size_in_mb': DATA_FILES_SIZE_IN_MB,
                'video_files_size_in_mb': VIDEO_FILES_SIZE_IN_MB, 'data_path': DATA_PATH,
                'video_path': VIDEO_PATH if self.camera_keys else None,
                'robot_type': self.robot_type,
                'splits': {'train': f'0:{len(self._episodes)}'}}
        _write_json(self.root / INFO_PATH, info)
        return info

    def features(self) -> dict:
        """info.json's features: cameras (video), state, action, then LeRobot's defaults."""
        features = {}
        for key in self.camera_keys:
            height, width, channels = self._camera_shapes[key]
            container, stream = self._videos[key]
            features[key] = {
                'dtype': 'video', 'shape': [height, width, channels],
                'names': ['height', 'width', 'channels'],
                'info': {'video.height': height, 'video.width': width,
                         'video.codec': stream.codec_context.codec.canonical_name,
                         'video.pix_fmt': self.encoding.pix_fmt, 'video.fps': self.fps,
                         'video.channels': channels, 'has_audio': False,
                         **self.encoding.info(), 'is_depth_map': False}}
        features[STATE] = {'dtype': 'float32', 'shape': [len(self.state_names)],
                           'names': self.state_names}
        features[ACTION] = {'dtype': 'float32', 'shape': [len(self.action_names)],
                            'names': self.action_names}
        return features | DEFAULT_FEATURES


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's per-feature stats over frames (axis 0): min max mean std count q01..q99."""
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(len(values), -1)  # (N, D); (N,) features become (N, 1)
    stats = {'min': values.min(0), 'max': values.max(0), 'mean': values.mean(0),
             'std': values.std(0), 'count': np.array([len(values)])}
    for q, value in zip(QUANTILES, np.quantile(values, QUANTILES, axis=0)):
        stats[f'q{int(round(q * 100)):02d}'] = value
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (N, H, W, 3) uint8 frames in [0, 1], shaped (3, 1, 1) like LeRobot."""
    pixels = np.asarray(frames, dtype=np.float64).reshape(-1, frames.shape[-1]) / 255.0
    stats = feature_stats(pixels)
    count = np.array([len(frames)])
    return {key: count if key == 'count' else value.reshape(-1, 1, 1)
            for key, value in stats.items()}


def aggregate_stats(stats: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-episode stats -> dataset stats, as LeRobot's aggregate_feature_stats does: min/max
    of extremes, count-weighted mean, pooled std, count-weighted quantiles."""
    counts = np.array([s['count'][0] for s in stats], dtype=np.float64)
    total = counts.sum()

    def weighted(key, values=None):
        values = np.stack([s[key] for s in stats]) if values is None else values
        return np.tensordot(counts, values, axes=1) / total

    mean = weighted('mean')
    variance = weighted('', np.stack([s['std'] ** 2 + (s['mean'] - mean) ** 2 for s in stats]))
    aggregated = {'min': np.min([s['min'] for s in stats], axis=0),
                  'max': np.max([s['max'] for s in stats], axis=0), 'mean': mean,
                  'std': np.sqrt(variance), 'count': np.array([int(total)])}
    aggregated.update({key: weighted(key) for key in stats[0] if key.startswith('q')})
    return aggregated


def _hf_features(features: dict) -> dict:
    """The Hugging Face `datasets` (>= 4) feature spec of the parquet columns (schema
    metadata)."""
    spec = {}
    for key, feature in features.items():
        if feature['dtype'] == 'video':
            continue
        value = {'dtype': feature['dtype'], '_type': 'Value'}
        spec[key] = value if feature['shape'] == [1] else {
            'feature': value, 'length': feature['shape'][0], '_type': 'List'}
    return spec


def _tasks_table(tasks: dict[str, int]):
    """meta/tasks.parquet: a pandas frame with index 'task' and column 'task_index'."""
    import pyarrow as pa

    table = pa.table({'task_index': pa.array(list(tasks.values()), pa.int64()),
                      'task': pa.array(list(tasks), pa.string())})
    pandas = {'index_columns': ['task'], 'column_indexes': [
        {'name': None, 'field_name': None, 'pandas_type': 'unicode', 'numpy_type': 'object',
         'metadata': {'encoding': 'UTF-8'}}],
        'columns': [{'name': 'task_index', 'field_name': 'task_index', 'pandas_type': 'int64',
                     'numpy_type': 'int64', 'metadata': None},
                    {'name': 'task', 'field_name': 'task', 'pandas_type': 'unicode',
                     'numpy_type': 'object', 'metadata': None}],
        'creator': {'library': 'pyarrow', 'version': pa.__version__}, 'pandas_version': '2.3.3'}
    return table.replace_schema_metadata({'pandas': json.dumps(pandas)})


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression='snappy')


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + '\n')


# ------------------------------------------------------------------------ bags -> dataset ---

DEFAULT_JOINT_TOPIC = '/joint_states'
JOINT_STATE = 'sensor_msgs/msg/JointState'


def camera_name(topic: str) -> str:
    """'/wrist_camera/image_raw' -> 'wrist_camera' (the LeRobot key is observation.images.<it>)."""
    parts = [p for p in topic.strip('/').split('/')
             if p not in ('image_raw', 'image', 'compressed', 'image_rect', 'image_color')]
    return '_'.join(parts) or 'camera'


def export_bags(bags: Sequence[Path], out: str | Path, node_config: NodeConfig, *,
                action_topic: str = dataset.DEFAULT_ACTION_TOPIC,
                joint_topic: str = DEFAULT_JOINT_TOPIC, fps: int | None = None,
                encoding: VideoEncoding = VideoEncoding(), task: str = 'demonstration',
                robot_type: str | None = None, progress: bool = True) -> dict:
    """Bags -> a LeRobotDataset v3.0 at `out`, one episode per bag; returns a summary.

    Frames are the observations training uses (dataset.bag_samples: images paired with the
    pose interpolated to their stamp, the node's sync checks); state = pose (x y z qx qy qz qw)
    + joint positions interpolated to the image stamp when the bag has `joint_topic`; action =
    the recorded action in effect at the frame. Written into a temporary sibling directory and
    renamed into place, so a failed export leaves nothing behind.
    """
    import shutil
    import tempfile

    from vit_perception.model.config import ActionConfig

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f'{out} exists: expected a new (or empty) dataset directory')
    cameras = [camera_name(topic) for topic in node_config.topics.cameras]
    if len(set(cameras)) != len(cameras):
        raise ConfigError(f'topics.cameras {node_config.topics.cameras} give camera names '
                          f'{cameras}: expected distinct topics')
    config = PolicyConfig(cameras=cameras, actions=ActionConfig(horizon=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    writer, summary = None, {'episodes': [], 'dropped': {}}
    try:
        for bag in dataset.progress_bar(bags, progress, 'exporting bags'):
            samples = dataset.bag_samples(bag, config, node_config, action_topic)
            if not samples.observations:
                raise DatasetError(f'{bag}: no observation pairs an image with a pose and an '
                                   'action; check topics and sync settings')
            bag_fps = fps or estimate_fps(samples.stamps, str(bag))
            grid_slots(samples.stamps, bag_fps, str(bag))
            joint_names, joints = joint_positions(bag, node_config, joint_topic, samples.stamps)
            state_names = list(POSE_NAMES) + joint_names
            if writer is None:
                writer = DatasetWriter(tmp, bag_fps, cameras, state_names,
                                       samples.action_names, encoding, robot_type)
            elif (bag_fps, state_names, samples.action_names) != (
                    writer.fps, writer.state_names, writer.action_names):
                raise DatasetError(f'{bag}: fps {bag_fps}, state {state_names}, actions '
                                   f"{samples.action_names} differ from the first bag's "
                                   f'{writer.fps}, {writer.state_names}, '
                                   f'{writer.action_names}; expected one format per dataset')
            obs = samples.observations
            state = np.concatenate([np.array([o.pose.position for o in obs]),
                                    np.array([o.pose.orientation for o in obs]), joints], axis=1)
            images = [np.stack([rgb8(o.frames[c], f'{bag}: camera {cameras[c]}') for o in obs])
                      for c in range(len(cameras))]
            writer.add(ExportedEpisode(images, state, samples.targets[:, 0], task))
            summary['episodes'].append({'bag': str(bag), 'frames': len(obs)})
            for reason, count in samples.dropped.items():
                summary['dropped'][reason] = summary['dropped'].get(reason, 0) + count
        if writer is None:
            raise DatasetError('no bags to export')
        info = writer.close()
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.update(out=str(out), fps=info['fps'], frames=info['total_frames'],
                   cameras=writer.camera_keys, state_names=writer.state_names,
                   action_names=writer.action_names)
    return summary


def estimate_fps(stamps: np.ndarray, where: str) -> int:
    """Integer frame rate from (N,) ns stamps: 1 / median period, rounded (LeRobot's fps)."""
    if len(stamps) < 2:
        raise DatasetError(f'{where}: one frame only, so the frame rate is unknown; pass --fps')
    return max(1, int(round(NS_PER_S / float(np.median(np.diff(stamps))))))


def grid_slots(stamps: np.ndarray, fps: int, where: str) -> None:
    """Check (N,) ns stamps are consecutive frames at `fps` (one per 1/fps s, within
    GRID_JITTER of a period): LeRobot writes frame i at timestamp i / fps."""
    offsets = (np.asarray(stamps, dtype=np.int64) - stamps[0]) * fps / NS_PER_S  # in frames
    slots = np.round(offsets)
    jitter = np.abs(offsets - slots)
    gaps = np.flatnonzero(slots != np.arange(len(stamps)))
    if len(gaps) or (len(jitter) and jitter.max() > GRID_JITTER):
        i = int(gaps[0]) if len(gaps) else int(jitter.argmax())
        raise DatasetError(f'{where}: frame {i} at {offsets[i] / fps:.3f} s is not 1/{fps} s '
                           f'after frame {i - 1}: LeRobot needs one frame every 1/fps s '
                           '(dropped images or a wrong --fps)')


def joint_positions(bag: Path, node_config: NodeConfig, topic: str,
                    stamps: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Joint names and (N, J) positions interpolated to `stamps` from the bag's JointState
    topic (clamped at the ends); ([], (N, 0)) when the bag has no such topic."""
    from vit_perception.drivers.bag import BagInput

    names, times, rows = None, [], []
    with BagInput(bag, node_config, [topic], require_extra=False) as reader:
        if reader.topics.get(topic) != JOINT_STATE:
            return [], np.zeros((len(stamps), 0))
        for event in reader.events():
            if event.topic != topic or event.kind != 'extra':
                continue
            msg = event.value
            if names is None:
                names = list(msg.name)
            if list(msg.name) != names or len(msg.position) != len(names):
                raise DatasetError(f'{bag}: {topic} changes its joints from {names} to '
                                   f'{list(msg.name)}; expected the same joints throughout')
            times.append(msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec)
            rows.append(np.asarray(msg.position, dtype=np.float64))
    if not rows:
        return [], np.zeros((len(stamps), 0))
    order = np.argsort(times, kind='stable')
    times, rows = np.asarray(times)[order], np.asarray(rows)[order]
    return names, np.stack([np.interp(stamps, times, rows[:, j]) for j in range(len(names))],
                           axis=1).reshape(len(stamps), len(names))


def rgb8(frame, where: str) -> np.ndarray:
    """An ImageFrame -> (H, W, 3) uint8 RGB for the video; DatasetError for 16-bit images."""
    from vit_perception.core.images import image_to_array

    image = image_to_array(frame)
    pixels = image.pixels
    if pixels.dtype != np.uint8:
        raise DatasetError(f'{where}: {pixels.dtype} pixels; LeRobot video holds 8-bit RGB, '
                           'expected an 8-bit image encoding')
    if image.channel_order in ('rgb', 'rgba'):
        return pixels[..., :3]
    if image.channel_order in ('bgr', 'bgra'):
        return pixels[..., 2::-1]
    return np.repeat(pixels[..., :1], 3, axis=2)  # mono


# ---------------------------------------------------------------- training inputs (hook) ---

def find_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Training inputs: LeRobot dataset directories as they are, bags found by find_bags."""
    found: list[Path] = []
    for item in paths:
        found.extend([Path(item)] if is_dataset(item) else dataset.find_bags([item]))
    if not paths:
        dataset.find_bags(paths)  # the one-line 'no bags found' error
    return list(dict.fromkeys(found))


def load_inputs(paths: Sequence[Path], policy_config: PolicyConfig, node_config: NodeConfig,
                action_topic: str = dataset.DEFAULT_ACTION_TOPIC,
                mapping: LeRobotMapping | None = None,
                progress: bool = True) -> list[dataset.Episode]:
    """Episodes of bags (dataset.load_episodes) and of LeRobot datasets (load_episodes above),
    one action space across all; with bags only, exactly what dataset.load_episodes returns."""
    import torch

    from vit_perception.core.preprocess import Preprocessor

    bags = [p for p in paths if not is_dataset(p)]
    episodes = dataset.load_episodes(bags, policy_config, node_config, action_topic,
                                     progress) if bags else []
    datasets = [p for p in paths if is_dataset(p)]
    preprocessor = Preprocessor(policy_config.preprocess, torch.device('cpu'), torch.float32)
    for path in datasets:
        for episode in load_episodes(path, policy_config, mapping or LeRobotMapping(),
                                     preprocessor, node_config, progress):
            if len(episode) == 0:
                reasons = ', '.join(f'{r} x{n}' for r, n in episode.dropped.items()) or 'none'
                raise DatasetError(f'{episode.name}: no usable frame (drops: {reasons})')
            episodes.append(episode)
    names = episodes[0].action_names
    for episode in episodes:
        if episode.action_names != names:
            raise DatasetError(f'{episode.name}: action names {episode.action_names} differ '
                               f'from {names} in {episodes[0].name}; expected one action space')
    return episodes
