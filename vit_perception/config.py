"""Policy configuration: grouped dataclasses, validated on construction, strict when parsed.

`PolicyConfig` is everything a checkpoint needs to rebuild the model and its preprocessing.
`from_dict` refuses unknown keys (typos are errors, never silently ignored). Every number must be
finite and inside a stated range (the `MAX_*` limits below), and a model larger than
`MAX_MODEL_PARAMETERS` is refused from its config alone, before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit_perception.errors import ConfigError, short_repr

FUSION_MODES = ('early', 'late')
BACKBONE_TYPES = ('vit', 'deit', 'dinov2', 'dinov2_with_registers', 'clip', 'siglip', 'beit',
                  'data2vec-vision', 'dpt')
DEFAULT_ACTION_NAMES = ('dx', 'dy', 'dz', 'drx', 'dry', 'drz', 'gripper')
ACTION_KINDS = ('delta', 'velocity')

# Model budget, checked on the config before anything is allocated: ViT-H/14 has 0.63e9
# parameters; 1e9 fp32 parameters take 4 GB. Tokens per camera bound the attention memory.
MAX_MODEL_PARAMETERS = 1_000_000_000
MAX_TOKENS_PER_CAMERA = 4096
MAX_IMAGE_SIDE = 4096  # backbone.image_size, preprocess sizes
MAX_CAMERAS = 16
MAX_NAMES = 64  # action names, proprio names
MAX_ARMS = 8
POSE_FEATURES = 9  # per arm: position (3) + 6D rotation (6)
MAX_LIST_LENGTH = 1024  # any list in a config
NUMBER = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+')  # 1e9: a str to YAML 1.1


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
        for name, most in (('hidden_size', 16384), ('num_layers', 256), ('num_heads', 256),
                           ('mlp_ratio', 16), ('patch_size', MAX_IMAGE_SIDE),
                           ('image_size', MAX_IMAGE_SIDE)):
            _require_positive(f'backbone.{name}', getattr(self, name), most)
        if self.feature_layer == 0 or abs(self.feature_layer) > 256:
            raise ConfigError(f'backbone.feature_layer={self.feature_layer}: expected -1 (last '
                              'layer), -2, ... or a '
                              'layer number >= 1')
        if self.hidden_size % self.num_heads:
            raise ConfigError(f'backbone.hidden_size={self.hidden_size} must be divisible by '
                              f'backbone.num_heads={self.num_heads}')


@dataclass
class PoseConfig:
    """How the end-effector poses (+ optional proprio scalars) become tokens."""

    # Number of pose tokens K per arm added to the sequence.
    num_tokens: int = 2
    # One name per arm (one PoseStamped topic each, in this order); every arm's pose becomes K
    # tokens of one shared tokenizer, tagged with a learned arm embedding when there are several.
    arms: list[str] = field(default_factory=lambda: ['ee'])
    # Joint names read from sensor_msgs/JointState.position (matched by name); the values are
    # appended to the first arm's pose features (e.g. ['gripper']).
    proprio_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        _require_positive('pose.num_tokens', self.num_tokens, 256)
        _require_at_most('pose.proprio_names', len(self.proprio_names), MAX_NAMES)
        if len(set(self.proprio_names)) != len(self.proprio_names):
            raise ConfigError(f'pose.proprio_names has duplicates: {self.proprio_names}')
        if (not self.arms or len(set(self.arms)) != len(self.arms)
                or len(self.arms) > MAX_ARMS):
            raise ConfigError(f'pose.arms={short_repr(self.arms)}: expected 1..{MAX_ARMS} '
                              'unique names')

    @property
    def feature_dim(self) -> int:
        """Per arm position (3) + 6D rotation (6), then the proprio scalars: 9 * arms + P."""
        return POSE_FEATURES * len(self.arms) + len(self.proprio_names)


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
        _require_positive('fusion.late_layers', self.late_layers, 64)
        _require_positive('fusion.late_heads', self.late_heads, 256)


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
        _require_at_most('actions.names', len(self.names), MAX_NAMES)
        _require_positive('actions.horizon', self.horizon, 1000)
        _require_positive('actions.dt', self.dt, 60.0)


@dataclass
class EmbeddingConfig:
    """The pooled embedding output."""

    dim: int = 256
    l2_normalize: bool = True

    def __post_init__(self):
        _require_positive('embedding.dim', self.dim, 65536)


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
        for name in ('size', 'crop_size'):
            sides = getattr(self, name)
            if (sides or name == 'size') and (
                    len(sides) != 2 or not all(0 < side <= MAX_IMAGE_SIDE for side in sides)):
                raise ConfigError(f'preprocess.{name}={short_repr(sides)}: expected [height, '
                                  f'width], each 1..{MAX_IMAGE_SIDE}')
        if not 0 <= self.shortest_edge <= MAX_IMAGE_SIDE:
            raise ConfigError(f'preprocess.shortest_edge={self.shortest_edge}: expected '
                              f'0..{MAX_IMAGE_SIDE}')
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
        if (not self.cameras or len(set(self.cameras)) != len(self.cameras)
                or len(self.cameras) > MAX_CAMERAS):
            raise ConfigError(f'cameras={short_repr(self.cameras)}: expected 1..{MAX_CAMERAS} '
                              'unique names')
        check_model_budget(self)

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
        if not isinstance(key, str):
            raise ConfigError(f'{path or "config"}: key {short_repr(key)} is a '
                              f'{type(key).__name__}; keys are names (strings)')
        where = f'{path}.{key}' if path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f' (known: {", ".join(names)})'
            raise ConfigError(f'unknown config key {short_repr(where)}{hint}')
        kwargs[key] = _coerce(hints[key], value, where)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}={short_repr(value)}: expected a list')
        if len(value) > MAX_LIST_LENGTH:
            raise ConfigError(f'{where}: {len(value)} items; at most {MAX_LIST_LENGTH}')
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(item, v, where) for v in value]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{where}={short_repr(value)}: expected a mapping')
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where}={short_repr(value)}: expected true or false')
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{where}={short_repr(value)}: expected an integer')
        return value
    if hint is float:
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e9 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{where}={short_repr(value)}: expected a number')
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f'{where}={short_repr(value)}: expected a finite number')
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f'{where}={short_repr(value)}: expected a string')
        return value
    return value


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set data['a']['b'] = value for dotted='a.b', creating nested dicts."""
    keys = dotted.split('.')
    if not all(keys):
        raise ConfigError(f'{short_repr(dotted)}: expected a dotted name like sync.max_future')
    for key in keys[:-1]:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f'cannot set {short_repr(dotted)}: {short_repr(key)} is not a '
                              'group')
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


def _require_positive(name: str, value: float, at_most: float | None = None) -> None:
    if not value > 0:
        raise ConfigError(f'{name}={short_repr(value)}: must be > 0')
    if at_most is not None:
        _require_at_most(name, value, at_most)


def _require_at_most(name: str, value: float, at_most: float) -> None:
    if not value <= at_most:
        raise ConfigError(f'{name}={short_repr(value)}: must be <= {at_most:g}')


def _hf_size(hf: dict, key: str, default: int | None = None, at_most: int = 1 << 20) -> int:
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= at_most:
        raise ConfigError(f'backbone.hf_config.{key}={short_repr(value)}: expected an integer '
                          f'1..{at_most}')
    return value


def estimate_parameters(config: PolicyConfig) -> int:
    """Parameter count of the policy from its config alone (to within a few percent)."""
    bb = config.backbone
    hf = bb.hf_config or _pretrained_hf_config(bb.pretrained)
    if hf:
        # An absent key takes transformers' default, of the order of ours.
        hidden = _hf_size(hf, 'hidden_size', bb.hidden_size, 16384)
        layers = _hf_size(hf, 'num_hidden_layers', bb.num_layers, 256)
        _hf_size(hf, 'num_attention_heads', bb.num_heads, 256)
        mlp_ratio = hf.get('mlp_ratio', 4)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not (
                0 < mlp_ratio <= 64):
            raise ConfigError(f'backbone.hf_config.mlp_ratio={short_repr(mlp_ratio)}: expected '
                              'a number in (0, 64]')
        inner = _hf_size(hf, 'intermediate_size', int(hidden * mlp_ratio))
        image = _hf_size(hf, 'image_size', bb.image_size, MAX_IMAGE_SIDE)
        patch = _hf_size(hf, 'patch_size', bb.patch_size, MAX_IMAGE_SIDE)
        channels = _hf_size(hf, 'num_channels', 3, 16)
    else:
        hidden, layers, inner = bb.hidden_size, bb.num_layers, bb.hidden_size * bb.mlp_ratio
        image, patch, channels = bb.image_size, bb.patch_size, 3
    tokens = (image // patch) ** 2
    if patch > image or tokens > MAX_TOKENS_PER_CAMERA:
        raise ConfigError(f'backbone: image_size {image} / patch_size {patch} gives {tokens} '
                          f'tokens per camera; expected 1..{MAX_TOKENS_PER_CAMERA}')
    per_layer = 4 * hidden * hidden + 2 * hidden * inner + 9 * hidden + inner
    count = layers * per_layer + channels * patch * patch * hidden + (tokens + 2) * hidden
    if config.fusion.mode == 'late':
        count += config.fusion.late_layers * (12 * hidden * hidden + 13 * hidden)
    pose_dim = POSE_FEATURES + len(config.pose.proprio_names)  # one tokenizer, shared by arms
    count += pose_dim * hidden + hidden * hidden * config.pose.num_tokens
    count += (len(config.cameras) + config.pose.num_tokens + len(config.pose.arms)) * hidden
    outputs = config.actions.horizon * len(config.actions.names)
    count += hidden * config.embedding.dim + hidden * hidden + hidden * outputs
    return int(count)


def _pretrained_hf_config(pretrained: str) -> dict:
    """config.json of a local pretrained directory ({} for a hub id or an unreadable file: the
    backbone loader reports those)."""
    path = Path(pretrained) / 'config.json' if pretrained else None
    try:
        if path is None or not path.is_file() or path.stat().st_size > MAX_CONFIG_FILE_BYTES:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def check_model_budget(config: PolicyConfig) -> None:
    """ConfigError when the policy would exceed MAX_MODEL_PARAMETERS (nothing allocated)."""
    count = estimate_parameters(config)
    if count > MAX_MODEL_PARAMETERS:
        raise ConfigError(f'the model would have about {count:.3g} parameters; the budget is '
                          f'{MAX_MODEL_PARAMETERS:.3g} (MAX_MODEL_PARAMETERS): check '
                          'backbone sizes (hidden_size, num_layers, hf_config)')


# --------------------------------------------------------------------------------------------
# Node configuration: one dataclass tree, mapped 1:1 onto ROS parameters (dotted names, e.g.
# `sync.max_pose_skew`) and onto config/default.yaml under `vit_perception: ros__parameters:`.
# --------------------------------------------------------------------------------------------

RELIABILITY = ('best_effort', 'reliable')
CAMERA_TRANSPORTS = ('raw', 'compressed')
DTYPES = ('auto', 'fp32', 'bf16', 'fp16')
DEVICE_PATTERN = re.compile(r'(auto|cpu|mps|cuda|cuda:\d{1,2})')
# Time limits (s) of node parameters: finite, and small enough for integer nanoseconds and
# timer periods. The control rate is at most MAX_CONTROL_RATE_HZ.
MAX_CONTROL_RATE_HZ = 1000.0
MAX_PERIOD_S = 3600.0
MAX_AGE_S = 60.0
MAX_CONFIG_FILE_BYTES = 1 << 20
ENGINE_BACKENDS = ('auto', 'torch', 'openvino', 'onnxruntime')


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
    # 'torch', 'openvino', 'onnxruntime' (ONNX graphs, pip extra `runtimes`), or 'auto': time
    # every installed one during warm-up and keep the lowest p99.
    backend: str = 'torch'
    # Where the ONNX graphs are cached; '' = $XDG_CACHE_HOME/vit_perception/onnx.
    cache_dir: str = ''

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f'engine.dtype={self.dtype!r}: expected one of {DTYPES}')
        if self.backend not in ENGINE_BACKENDS:
            raise ConfigError(f'engine.backend={short_repr(self.backend)}: expected one of '
                              f'{ENGINE_BACKENDS}')
        if not 0 <= self.warmup_iters <= 100_000:
            raise ConfigError(f'engine.warmup_iters={self.warmup_iters}: expected 0..100000')
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f'engine.device={short_repr(self.device)}: expected auto, cpu, '
                              'cuda, cuda:N or mps')


@dataclass
class TopicsConfig:
    """Topic names (all remappable)."""

    # One topic per camera, in the order of the checkpoint's `cameras`.
    cameras: list[str] = field(default_factory=lambda: ['/camera/image_raw'])
    # Per camera: 'raw' (sensor_msgs/Image) or 'compressed' (sensor_msgs/CompressedImage).
    camera_transports: list[str] = field(default_factory=lambda: ['raw'])
    # One geometry_msgs/PoseStamped topic per arm, in the order of the checkpoint's pose.arms.
    poses: list[str] = field(default_factory=lambda: ['/ee_pose'])
    # One-arm shorthand kept for existing configs: pose: X means poses: [X].
    pose: str = ''
    # sensor_msgs/JointState; subscribed only when the checkpoint has pose.proprio_names.
    joint_states: str = '/joint_states'
    embedding: str = '/vit_perception/embedding'
    action_chunk: str = '/vit_perception/action_chunk'
    action: str = '/vit_perception/action'
    diagnostics: str = '/diagnostics'
    # Optional extra output: each action as geometry_msgs/TwistStamped (deltas / dt) for
    # velocity-controlled arms and the Gazebo bridge; '' = off.
    twist: str = ''

    def __post_init__(self):
        if not self.cameras or len(self.cameras) > MAX_CAMERAS:
            raise ConfigError(f'topics.cameras has {len(self.cameras)} topics: give one image '
                              f'topic per camera (1..{MAX_CAMERAS})')
        if len(self.camera_transports) != len(self.cameras):
            raise ConfigError(
                f'topics.camera_transports has {len(self.camera_transports)} entries for '
                f'{len(self.cameras)} cameras: give one of {CAMERA_TRANSPORTS} per camera')
        for transport in self.camera_transports:
            if transport not in CAMERA_TRANSPORTS:
                raise ConfigError(f'topics.camera_transports: {short_repr(transport)} is not '
                                  f'one of {CAMERA_TRANSPORTS}')
        if self.pose:
            if self.poses not in (['/ee_pose'], [self.pose]):
                raise ConfigError(f'topics.pose={self.pose!r} and topics.poses={self.poses}: '
                                  'give one of them (topics.pose is the one-arm shorthand)')
            self.poses, self.pose = [self.pose], ''
        if not self.poses or len(self.poses) > MAX_ARMS:
            raise ConfigError(f'topics.poses has {len(self.poses)} topics: give one '
                              f'PoseStamped topic per arm (1..{MAX_ARMS})')


POSE_SOURCES = ('topic', 'tf')


@dataclass
class PoseInputConfig:
    """Where the end-effector pose comes from."""

    # 'topic': PoseStamped on topics.poses; 'tf' (rclpy only, one arm): tf_base_frame ->
    # tf_ee_frame.
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
    # Every pose topic and the joint states.
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
            _require_positive(f'qos.{name}', getattr(self, name), 10000)


@dataclass
class SyncConfig:
    """Pairing images with poses, and the staleness checks."""

    # Seconds of pose (and joint-state) history kept for interpolation.
    pose_history: float = 2.0
    # Max distance (s) from the image stamp to the nearest pose sample used to interpolate it
    # (every arm's, and the joint states').
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
        for name in ('pose_history', 'max_pose_skew', 'camera_tolerance', 'max_observation_age'):
            _require_positive(f'sync.{name}', getattr(self, name), MAX_AGE_S)
        _require_positive('sync.quaternion_tolerance', self.quaternion_tolerance, 1.0)
        if not 0 <= self.max_future <= MAX_AGE_S:
            raise ConfigError(f'sync.max_future={self.max_future}: expected 0..{MAX_AGE_S:g}')


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
        if not 0.1 <= self.control_rate_hz <= MAX_CONTROL_RATE_HZ:
            raise ConfigError(f'control.control_rate_hz={self.control_rate_hz}: expected '
                              f'0.1..{MAX_CONTROL_RATE_HZ:g} Hz')
        if not abs(self.ensemble_coeff) <= 1000:
            raise ConfigError(f'control.ensemble_coeff={self.ensemble_coeff}: expected '
                              '-1000..1000')


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
        _require_positive('safety.max_inference_time', self.max_inference_time, MAX_PERIOD_S)


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
        if not 0.01 <= self.diagnostics_period <= MAX_PERIOD_S:
            raise ConfigError(f'diagnostics_period={self.diagnostics_period}: expected '
                              f'0.01..{MAX_PERIOD_S:g} s')
        _require_positive('log_throttle', self.log_throttle, MAX_PERIOD_S)
        if self.pose_input.source == 'tf' and len(self.topics.poses) > 1:
            raise ConfigError(f'pose_input.source tf reads one arm; topics.poses has '
                              f'{len(self.topics.poses)}: use pose_input.source topic')
        if not -1 <= self.domain_id <= 232:
            raise ConfigError(f'domain_id={self.domain_id}: expected -1 (ROS_DOMAIN_ID or 0) '
                              'or 0..232')

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
    data: dict = {}
    if path:
        path = Path(path)
        loaded = parse_yaml(_read_config_text(path), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f'{path}: expected a mapping at the top level, got '
                              f'{type(loaded).__name__}')
        if NODE_NAME in loaded:
            loaded = loaded[NODE_NAME]
        data = loaded.get('ros__parameters', loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(data, dict):
            raise ConfigError(f'{path}: expected `{NODE_NAME}: ros__parameters:` to hold a '
                              f'mapping of parameters, got {type(data).__name__}')
        data = _unflatten(data, str(path))
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'--set {short_repr(item)}: expected key=value, e.g. --set '
                              'control.control_rate_hz=100')
        value = parse_yaml(text, f'--set {key.strip()}') if text else ''
        set_dotted(data, key.strip(), value)
    return NodeConfig.from_dict(data)


def _read_config_text(path: Path) -> str:
    try:
        if path.is_dir():
            raise ConfigError(f'{path}: is a directory; expected a YAML file')
        if path.stat().st_size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f'{path}: {path.stat().st_size} bytes; a config file is at most '
                              f'{MAX_CONFIG_FILE_BYTES} bytes')
        return path.read_bytes().decode('utf-8')
    except FileNotFoundError:
        raise ConfigError(f'{path}: config file not found') from None
    except UnicodeDecodeError as err:
        raise ConfigError(f'{path}: not UTF-8 text (byte {err.start}); expected a YAML '
                          'file') from None
    except OSError as err:
        raise ConfigError(f'{path}: cannot read it ({err.strerror or err})') from None


def parse_yaml(text: str, where: str):
    """yaml.safe_load, refusing aliases of mappings and lists (alias bombs expand to gigabytes
    when walked) and nesting deeper than 32; one-line ConfigError on any problem."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                node = self.anchors.get(event.anchor)
                if node is not None and not isinstance(node, yaml.ScalarNode):
                    raise ConfigError(f'{where}: line {event.start_mark.line + 1}: alias '
                                      f'*{short_repr(event.anchor)} of a mapping or list; '
                                      'write the values out (aliases of those are refused)')
            self._depth = getattr(self, '_depth', 0) + 1
            try:
                if self._depth > 32:
                    raise ConfigError(f'{where}: nested deeper than 32 levels')
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        mark = getattr(err, 'problem_mark', None)
        line = f' at line {mark.line + 1}' if mark is not None else ''
        raise ConfigError(f'{where}: not valid YAML{line} ({first})') from None
    except RecursionError:
        raise ConfigError(f'{where}: nested too deeply') from None


def _unflatten(data: dict, where: str) -> dict:
    """Accept both nested YAML and dotted keys ('sync.max_pose_skew': 0.1)."""
    out: dict = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f'{where}: key {short_repr(key)} is a {type(key).__name__}; '
                              'parameter names are strings')
        if isinstance(value, dict):
            value = _unflatten(value, where)
        if '.' in key:
            set_dotted(out, key, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out
