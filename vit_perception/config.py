"""Policy configuration: grouped dataclasses, validated on construction, strict when parsed.

`PolicyConfig` is everything a checkpoint needs to rebuild the model and its preprocessing.
`from_dict` refuses unknown keys (typos are errors, never silently ignored).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit_perception.errors import ConfigError

FUSION_MODES = ('early', 'late')
BACKBONE_TYPES = ('vit', 'deit', 'dinov2', 'dinov2_with_registers', 'clip', 'siglip', 'beit',
                  'data2vec-vision', 'dpt')
DEFAULT_ACTION_NAMES = ('dx', 'dy', 'dz', 'drx', 'dry', 'drz', 'gripper')
ACTION_KINDS = ('delta', 'velocity')


@dataclass
class BackboneConfig:
    """Which ViT-family encoder to build and how."""

    # Local directory or hub id of a pretrained model; empty = build from the sizes below.
    pretrained: str = ''
    # One of BACKBONE_TYPES (used when building from sizes; a pretrained directory names its own).
    model_type: str = 'vit'
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    mlp_ratio: int = 4
    patch_size: int = 16
    image_size: int = 224
    # Freeze the backbone weights during training.
    freeze: bool = False
    # Which layer's tokens to read: -1 the last (then the final norm), -2 the second-to-last (raw,
    # as VLAs use), k >= 1 layer k. Checked against the layer count when the backbone is built.
    feature_layer: int = -1
    # Full HF config of the backbone, filled in when built; checkpoints rebuild from it offline.
    hf_config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model_type not in BACKBONE_TYPES:
            raise ConfigError(
                f'backbone.model_type={self.model_type!r}: expected one of {BACKBONE_TYPES}')
        for name in ('hidden_size', 'num_layers', 'num_heads', 'mlp_ratio', 'patch_size',
                     'image_size'):
            _require_positive(f'backbone.{name}', getattr(self, name))
        if self.feature_layer == 0:
            raise ConfigError('backbone.feature_layer=0: expected -1 (last layer), -2, ... or a '
                              'layer number >= 1')
        if self.hidden_size % self.num_heads:
            raise ConfigError(f'backbone.hidden_size={self.hidden_size} must be divisible by '
                              f'backbone.num_heads={self.num_heads}')


@dataclass
class PoseConfig:
    """How the end-effector pose (+ optional proprio scalars) becomes tokens."""

    # Number of pose tokens K added to the sequence.
    num_tokens: int = 2
    # Names of extra proprioceptive scalars appended to the pose (e.g. ['gripper']).
    proprio_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        _require_positive('pose.num_tokens', self.num_tokens)

    @property
    def feature_dim(self) -> int:
        """Position (3) + 6D rotation (6) + proprio scalars."""
        return 9 + len(self.proprio_names)


@dataclass
class FusionConfig:
    """Where pose tokens meet image tokens."""

    # 'early': pose tokens join the ViT sequence; 'late': a small transformer after the ViT.
    mode: str = 'early'
    # Late fusion only: transformer layers and heads.
    late_layers: int = 2
    late_heads: int = 6

    def __post_init__(self):
        if self.mode not in FUSION_MODES:
            raise ConfigError(f'fusion.mode={self.mode!r}: expected one of {FUSION_MODES}')
        _require_positive('fusion.late_layers', self.late_layers)
        _require_positive('fusion.late_heads', self.late_heads)


@dataclass
class ActionConfig:
    """The action chunk the policy predicts."""

    names: list[str] = field(default_factory=lambda: list(DEFAULT_ACTION_NAMES))
    # Steps per chunk (H) and seconds between steps.
    horizon: int = 8
    dt: float = 0.1
    # What dx dy dz drx dry drz mean: 'delta' = metres / radians per step of dt; 'velocity' =
    # m/s and rad/s. Only the TwistStamped output (topics.twist) depends on it.
    kind: str = 'delta'

    def __post_init__(self):
        if self.kind not in ACTION_KINDS:
            raise ConfigError(f'actions.kind={self.kind!r}: expected one of {ACTION_KINDS}')
        if not self.names:
            raise ConfigError('actions.names is empty: name at least one action dimension')
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f'actions.names has duplicates: {self.names}')
        _require_positive('actions.horizon', self.horizon)
        _require_positive('actions.dt', self.dt)


@dataclass
class EmbeddingConfig:
    """The pooled embedding output."""

    dim: int = 256
    l2_normalize: bool = True

    def __post_init__(self):
        _require_positive('embedding.dim', self.dim)


@dataclass
class PreprocessConfig:
    """Image preprocessing; filled from the backbone's image processor when one exists."""

    # Resize target (height, width); with shortest_edge > 0 resize keeps aspect, then crops.
    size: list[int] = field(default_factory=lambda: [224, 224])
    shortest_edge: int = 0
    crop_size: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    # Resize filter: 'bilinear' (ViT) or 'bicubic' (DeiT, DINOv2), as the HF processor says.
    resample: str = 'bilinear'

    def __post_init__(self):
        if self.resample not in ('bilinear', 'bicubic'):
            raise ConfigError(f'preprocess.resample={self.resample!r}: expected bilinear or '
                              'bicubic')
        if len(self.size) != 2 or min(self.size) <= 0:
            raise ConfigError(f'preprocess.size={self.size}: expected [height, width] > 0')
        if self.crop_size and (len(self.crop_size) != 2 or min(self.crop_size) <= 0):
            raise ConfigError(f'preprocess.crop_size={self.crop_size}: expected [height, width]')
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError('preprocess.mean/std: expected 3 values each, std > 0')

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the tensor the model sees."""
        return tuple(self.crop_size) if self.crop_size else tuple(self.size)


@dataclass
class PolicyConfig:
    """Everything needed to rebuild the policy model and its preprocessing."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    actions: ActionConfig = field(default_factory=ActionConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # One name per camera stream; tokens are tagged with a learned embedding per camera.
    cameras: list[str] = field(default_factory=lambda: ['camera'])
    # Free-form identifier published with every embedding.
    model_id: str = 'vit_perception'
    # The model zeroes every image before encoding: a pose-only baseline (train --ablate-images).
    # Part of the model, so training, replay and the node all see the same (blank) input.
    ablate_images: bool = False

    def __post_init__(self):
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f'cameras={self.cameras}: expected one or more unique names')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        return from_dict(cls, data)


def tiny_config(**overrides: Any) -> PolicyConfig:
    """A very small policy for tests and quick experiments (random init, 32x32 input)."""
    data = {
        'backbone': {'hidden_size': 32, 'num_layers': 2, 'num_heads': 2, 'mlp_ratio': 2,
                     'patch_size': 8, 'image_size': 32},
        'fusion': {'late_heads': 2, 'late_layers': 1},
        'actions': {'horizon': 4},
        'embedding': {'dim': 16},
        'preprocess': {'size': [32, 32]},
    }
    for dotted, value in overrides.items():
        set_dotted(data, dotted.replace('__', '.'), value)
    return PolicyConfig.from_dict(data)


def from_dict(cls: type, data: Any, path: str = ''):
    """Build dataclass `cls` from a plain dict; unknown keys raise ConfigError naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f'{path or "config"}: expected a mapping, got {type(data).__name__}')
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f'{path}.{key}' if path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f' (known: {", ".join(names)})'
            raise ConfigError(f"unknown config key '{where}'{hint}")
        kwargs[key] = _coerce(hints[key], value, where)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}={value!r}: expected a list')
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(item, v, where) for v in value]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{where}={value!r}: expected a mapping')
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where}={value!r}: expected true or false')
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{where}={value!r}: expected an integer')
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{where}={value!r}: expected a number')
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f'{where}={value!r}: expected a string')
        return value
    return value


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set data['a']['b'] = value for dotted='a.b', creating nested dicts."""
    keys = dotted.split('.')
    for key in keys[:-1]:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f"cannot set '{dotted}': '{key}' is not a group")
    data[keys[-1]] = value


def load_json(path: str | Path) -> dict:
    """Read a JSON file into a dict with a one-line error on failure."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f'{path}: file not found') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f'{path}: not valid JSON ({err})') from None


def _require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f'{name}={value!r}: must be > 0')


# --------------------------------------------------------------------------------------------
# Node configuration: one dataclass tree, mapped 1:1 onto ROS parameters (dotted names, e.g.
# `sync.max_pose_skew`) and onto config/default.yaml under `vit_perception: ros__parameters:`.
# --------------------------------------------------------------------------------------------

RELIABILITY = ('best_effort', 'reliable')
CAMERA_TRANSPORTS = ('raw', 'compressed')
DTYPES = ('auto', 'fp32', 'bf16', 'fp16')


@dataclass
class EngineConfig:
    """Which checkpoint to run and how."""

    # Checkpoint directory; empty = the small checkpoint shipped with the package.
    model: str = ''
    # 'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...
    device: str = 'auto'
    # 'auto' = bf16 where fast (CUDA, or CPU with bf16 matmul), else fp32.
    dtype: str = 'auto'
    # torch.compile the forward pass (slower start, faster steady state).
    compile: bool = False
    # Forward passes run at load time so the first real message is not slow.
    warmup_iters: int = 3

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f'engine.dtype={self.dtype!r}: expected one of {DTYPES}')
        if self.warmup_iters < 0:
            raise ConfigError(f'engine.warmup_iters={self.warmup_iters}: must be >= 0')


@dataclass
class TopicsConfig:
    """Topic names (all remappable)."""

    # One topic per camera, in the order of the checkpoint's `cameras`.
    cameras: list[str] = field(default_factory=lambda: ['/camera/image_raw'])
    # Per camera: 'raw' (sensor_msgs/Image) or 'compressed' (sensor_msgs/CompressedImage).
    camera_transports: list[str] = field(default_factory=lambda: ['raw'])
    pose: str = '/ee_pose'
    embedding: str = '/vit_perception/embedding'
    action_chunk: str = '/vit_perception/action_chunk'
    action: str = '/vit_perception/action'
    diagnostics: str = '/diagnostics'
    # Optional extra output: each action as geometry_msgs/TwistStamped (deltas / dt) for
    # velocity-controlled arms and the Gazebo bridge; '' = off.
    twist: str = ''

    def __post_init__(self):
        if not self.cameras:
            raise ConfigError('topics.cameras is empty: give one image topic per camera')
        if len(self.camera_transports) != len(self.cameras):
            raise ConfigError(
                f'topics.camera_transports has {len(self.camera_transports)} entries for '
                f'{len(self.cameras)} cameras: give one of {CAMERA_TRANSPORTS} per camera')
        for transport in self.camera_transports:
            if transport not in CAMERA_TRANSPORTS:
                raise ConfigError(f'topics.camera_transports: {transport!r} is not one of '
                                  f'{CAMERA_TRANSPORTS}')


POSE_SOURCES = ('topic', 'tf')


@dataclass
class PoseInputConfig:
    """Where the end-effector pose comes from."""

    # 'topic': PoseStamped on topics.pose; 'tf' (rclpy only): tf_base_frame -> tf_ee_frame.
    source: str = 'topic'
    tf_base_frame: str = 'base_link'
    tf_ee_frame: str = 'tool0'

    def __post_init__(self):
        if self.source not in POSE_SOURCES:
            raise ConfigError(f'pose_input.source={self.source!r}: expected one of '
                              f'{POSE_SOURCES}')
        if self.source == 'tf' and not (self.tf_base_frame and self.tf_ee_frame):
            raise ConfigError('pose_input.source tf: set pose_input.tf_base_frame and '
                              'pose_input.tf_ee_frame')


@dataclass
class QosConfig:
    """QoS per input/output. Images default to sensor-data (best effort, keep last 5)."""

    image_reliability: str = 'best_effort'
    image_depth: int = 5
    pose_reliability: str = 'reliable'
    pose_depth: int = 10
    output_reliability: str = 'reliable'
    output_depth: int = 10

    def __post_init__(self):
        for name in ('image_reliability', 'pose_reliability', 'output_reliability'):
            if getattr(self, name) not in RELIABILITY:
                raise ConfigError(f'qos.{name}={getattr(self, name)!r}: expected one of '
                                  f'{RELIABILITY}')
        for name in ('image_depth', 'pose_depth', 'output_depth'):
            _require_positive(f'qos.{name}', getattr(self, name))


@dataclass
class SyncConfig:
    """Pairing images with poses, and the staleness checks."""

    # Seconds of pose history kept for interpolation.
    pose_history: float = 2.0
    # Max distance (s) from the image stamp to the nearest pose sample used to interpolate it.
    max_pose_skew: float = 0.05
    # Max spread (s) of image stamps grouped into one multi-camera observation.
    camera_tolerance: float = 0.02
    # An observation older than this (s, by the node clock) is never acted on.
    max_observation_age: float = 0.5
    # Stamps further than this (s) in the future of the node clock are rejected.
    max_future: float = 0.1
    # Expected pose frame_id; empty = accept any.
    pose_frame_id: str = ''
    # Quaternions whose norm is off by more than this are rejected (else renormalized).
    quaternion_tolerance: float = 0.05

    def __post_init__(self):
        for name in ('pose_history', 'max_pose_skew', 'camera_tolerance', 'max_observation_age',
                     'quaternion_tolerance'):
            _require_positive(f'sync.{name}', getattr(self, name))
        if self.max_future < 0:
            raise ConfigError(f'sync.max_future={self.max_future}: must be >= 0')


@dataclass
class ControlConfig:
    """The control-rate action output."""

    control_rate_hz: float = 50.0
    # ACT temporal ensembling: weight exp(-coeff * i) for the i-th oldest chunk; 0 = uniform;
    # negative = newest chunk only.
    ensemble_coeff: float = 0.01
    # Late fusion only: re-run the pose part with the newest pose at every tick.
    late_fusion_refresh: bool = True

    def __post_init__(self):
        _require_positive('control.control_rate_hz', self.control_rate_hz)


@dataclass
class SafetyConfig:
    """Action limits, enforced in one place (core/safety.py). Empty lists = no limit."""

    # Per-dimension clamp, one value per action name.
    action_min: list[float] = field(default_factory=list)
    action_max: list[float] = field(default_factory=list)
    # Max change of each dimension between two consecutive published actions.
    max_step: list[float] = field(default_factory=list)
    # Absolute-target actions only: workspace box for the dimensions named in workspace_dims.
    workspace_dims: list[str] = field(default_factory=list)
    workspace_min: list[float] = field(default_factory=list)
    workspace_max: list[float] = field(default_factory=list)
    # Inference slower than this (s) counts as a stall: actions stop until it recovers.
    max_inference_time: float = 1.0

    def __post_init__(self):
        if len(self.action_min) != len(self.action_max):
            raise ConfigError('safety.action_min and safety.action_max must have equal length')
        if any(lo > hi for lo, hi in zip(self.action_min, self.action_max)):
            raise ConfigError(f'safety.action_min={self.action_min} exceeds action_max='
                              f'{self.action_max}')
        if any(step <= 0 for step in self.max_step):
            raise ConfigError(f'safety.max_step={self.max_step}: every value must be > 0')
        n = len(self.workspace_dims)
        if len(self.workspace_min) != n or len(self.workspace_max) != n:
            raise ConfigError('safety.workspace_dims/min/max must have equal length')
        _require_positive('safety.max_inference_time', self.max_inference_time)


@dataclass
class NodeConfig:
    """Every parameter of the perception node (ROS parameter `a.b` = field a.b)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    pose_input: PoseInputConfig = field(default_factory=PoseInputConfig)
    qos: QosConfig = field(default_factory=QosConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    # Seconds between /diagnostics messages.
    diagnostics_period: float = 1.0
    # Minimum seconds between two log lines of the same kind (drops, errors).
    log_throttle: float = 5.0
    # DDS driver only: DDS domain id (ROS_DOMAIN_ID); -1 = take ROS_DOMAIN_ID or 0.
    domain_id: int = -1

    def __post_init__(self):
        _require_positive('diagnostics_period', self.diagnostics_period)
        _require_positive('log_throttle', self.log_throttle)

    @classmethod
    def from_dict(cls, data: dict) -> NodeConfig:
        return from_dict(cls, data)


NODE_NAME = 'vit_perception'


def flatten(data: dict, prefix: str = '') -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (ROS parameter names)."""
    flat = {}
    for key, value in data.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def load_node_config(path: str | Path | None = None, overrides: list[str] = ()) -> NodeConfig:
    """Read a YAML config (`vit_perception: ros__parameters:` or a plain mapping) + `key=value`s.

    Raises ConfigError with a one-line message on a bad file, unknown key or bad value.
    """
    import yaml

    data: dict = {}
    if path:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f'{path}: config file not found') from None
        except yaml.YAMLError as err:
            raise ConfigError(f'{path}: not valid YAML ({str(err).splitlines()[0]})') from None
        if not isinstance(loaded, dict):
            raise ConfigError(f'{path}: expected a mapping at the top level')
        if NODE_NAME in loaded:
            loaded = loaded[NODE_NAME]
        data = loaded.get('ros__parameters', loaded) if isinstance(loaded, dict) else loaded
        data = _unflatten(data)
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'--set {item!r}: expected key=value, e.g. --set control.'
                              f'control_rate_hz=100')
        set_dotted(data, key.strip(), yaml.safe_load(text) if text else '')
    return NodeConfig.from_dict(data)


def _unflatten(data: dict) -> dict:
    """Accept both nested YAML and dotted keys ('sync.max_pose_skew': 0.1)."""
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _unflatten(value)
        if '.' in key:
            set_dotted(out, key, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out
