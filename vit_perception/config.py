"""The node's configuration: one dataclass tree, mapped 1:1 onto ROS parameters (dotted names,
e.g. `sync.max_pose_skew`) and onto config/default.yaml under `vit_perception: ros__parameters:`.

Each field is declared with `param(description, default=...)`: its one description, which the
rclpy node declares the ROS parameter with. Validated on construction, strict when parsed
(`vit_perception/schema.py`). The checkpoint's own config is `model/config.py`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit_perception.errors import ConfigError, short_repr
from vit_perception.model.config import MAX_ARMS, MAX_CAMERAS
from vit_perception.schema import (
    from_dict,
    parse_yaml,
    read_config_text,
    require_positive,
    set_dotted,
    unflatten,
)


def param(help: str, *, default: Any = dataclasses.MISSING,
          factory: Any = dataclasses.MISSING):
    """A node parameter: its description (the one place it is written: the rclpy node declares
    the parameter with it) and its default or default factory."""
    return field(default=default, default_factory=factory, metadata={'help': help})


def parameter_descriptions(cls: type | None = None, prefix: str = '') -> dict[str, str]:
    """{'sync.max_pose_skew': description, ...}: every node parameter (dotted name)."""
    cls = cls or NodeConfig
    hints = typing.get_type_hints(cls)
    out = {}
    for item in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[item.name]):
            out.update(parameter_descriptions(hints[item.name], f'{prefix}{item.name}.'))
        else:
            out[f'{prefix}{item.name}'] = item.metadata['help']
    return out


RELIABILITY = ('best_effort', 'reliable')
CAMERA_TRANSPORTS = ('raw', 'compressed')
DTYPES = ('auto', 'fp32', 'bf16', 'fp16')
DEVICE_PATTERN = re.compile(r'(auto|cpu|mps|cuda|cuda:\d{1,2})')
# Time limits (s) of node parameters: finite, and small enough for integer nanoseconds and
# timer periods. The control rate is at most MAX_CONTROL_RATE_HZ.
MAX_CONTROL_RATE_HZ = 1000.0
MAX_PERIOD_S = 3600.0
MAX_AGE_S = 60.0
ENGINE_BACKENDS = ('auto', 'torch', 'openvino', 'onnxruntime')
MAX_THREADS = 1024
NICE_RANGE = (-20, 19)  # Linux nice values, lowest = highest priority


@dataclass
class EngineConfig:
    """Which checkpoint to run and how."""

    model: str = param(
        'Checkpoint directory; empty = the small checkpoint shipped with the package.',
        default='')
    device: str = param(
        "'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...",
        default='auto')
    dtype: str = param(
        "'auto' (bf16 on CUDA and on CPUs with bf16 matmul, else fp32), 'fp32', 'bf16' or "
        "'fp16'.",
        default='auto')
    compile: bool = param(
        'torch.compile the forward pass (slower start, faster steady state).',
        default=False)
    warmup_iters: int = param(
        'Forward passes run at load time so the first message is not slow.',
        default=3)
    backend: str = param(
        "'torch', 'openvino', 'onnxruntime' (pip extra runtimes) or 'auto' (time each installed "
        'one at warm-up, keep the lowest p99).',
        default='torch')
    cache_dir: str = param(
        'ONNX graph cache directory; empty = $XDG_CACHE_HOME/vit_perception/onnx.',
        default='')
    threads: int = param(
        "Intra-op threads of torch (process-wide) and of the runtimes; 0 = each library's "
        'default (one per core). Fewer than the cores bounds latency when other processes '
        'share them.',
        default=0)
    nice: int = param(
        'Nice value (-20..19) of every thread of the process, set when the engine loads; 0 = '
        "leave it as it is. Below the other processes' (usually 0) the node gets the CPU "
        'first when they compete; negative values need CAP_SYS_NICE or a nice entry in '
        '/etc/security/limits.conf, else the node warns once and keeps its priority.',
        default=0)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f'engine.dtype={self.dtype!r}: expected one of {DTYPES}')
        if self.backend not in ENGINE_BACKENDS:
            raise ConfigError(f'engine.backend={short_repr(self.backend)}: expected one of '
                              f'{ENGINE_BACKENDS}')
        if not 0 <= self.warmup_iters <= 100_000:
            raise ConfigError(f'engine.warmup_iters={self.warmup_iters}: expected 0..100000')
        if not 0 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"engine.threads={self.threads}: expected 0 (the libraries' "
                              f'default) .. {MAX_THREADS}')
        if not NICE_RANGE[0] <= self.nice <= NICE_RANGE[1]:
            raise ConfigError(f'engine.nice={self.nice}: expected {NICE_RANGE[0]}..'
                              f'{NICE_RANGE[1]} (0: unchanged; lower = more CPU under contention)')
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f'engine.device={short_repr(self.device)}: expected auto, cpu, '
                              'cuda, cuda:N or mps')


@dataclass
class TopicsConfig:
    """Topic names (all remappable)."""

    cameras: list[str] = param(
        'Image topics, one per camera, in the order of the checkpoint cameras.',
        factory=lambda: ['/camera/image_raw'])
    camera_transports: list[str] = param(
        "Per camera: 'raw' (sensor_msgs/Image) or 'compressed' (sensor_msgs/CompressedImage, give"
        ' the .../compressed topic).',
        factory=lambda: ['raw'])
    poses: list[str] = param(
        'End-effector pose inputs (geometry_msgs/PoseStamped), one per arm in the order of the '
        'checkpoint pose.arms; unused with pose_input.source tf.',
        factory=lambda: ['/ee_pose'])
    pose: str = param(
        'One-arm shorthand of topics.poses (kept for existing configs); empty = use topics.poses.',
        default='')
    joint_states: str = param(
        'Joint positions input (sensor_msgs/JointState), read by name when the checkpoint has '
        'pose.proprio_names; else not subscribed.',
        default='/joint_states')
    embedding: str = param(
        'Output: vit_perception/Embedding, one per observation.',
        default='/vit_perception/embedding')
    action_chunk: str = param(
        'Output: vit_perception/ActionChunk, one per observation.',
        default='/vit_perception/action_chunk')
    action: str = param(
        'Output: vit_perception/ActionChunk with horizon 1, every control tick.',
        default='/vit_perception/action')
    diagnostics: str = param(
        'Output: diagnostic_msgs/DiagnosticArray, every diagnostics_period.',
        default='/diagnostics')
    twist: str = param(
        'Optional output: each action as geometry_msgs/TwistStamped (dx dy dz drx dry drz divided'
        ' by the chunk dt, missing ones 0); empty = off.',
        default='')

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

    source: str = param(
        "'topic': PoseStamped on topics.poses; 'tf' (rclpy only, one arm): look up "
        'pose_input.tf_base_frame -> tf_ee_frame at every control tick.',
        default='topic')
    tf_base_frame: str = param(
        'pose_input.source tf: the frame the end-effector pose is expressed in.',
        default='base_link')
    tf_ee_frame: str = param(
        'pose_input.source tf: the end-effector frame.',
        default='tool0')

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

    image_reliability: str = param(
        "Image subscriptions: 'best_effort' (sensor data) or 'reliable'.",
        default='best_effort')
    image_depth: int = param(
        'Image subscriptions: keep-last depth.',
        default=5)
    pose_reliability: str = param(
        "Pose and joint-state subscriptions: 'best_effort' or 'reliable'.",
        default='reliable')
    pose_depth: int = param(
        'Pose and joint-state subscriptions: keep-last depth.',
        default=10)
    output_reliability: str = param(
        "Output publishers: 'best_effort' or 'reliable'.",
        default='reliable')
    output_depth: int = param(
        'Output publishers: keep-last depth.',
        default=10)

    def __post_init__(self):
        for name in ('image_reliability', 'pose_reliability', 'output_reliability'):
            if getattr(self, name) not in RELIABILITY:
                raise ConfigError(f'qos.{name}={getattr(self, name)!r}: expected one of '
                                  f'{RELIABILITY}')
        for name in ('image_depth', 'pose_depth', 'output_depth'):
            require_positive(f'qos.{name}', getattr(self, name), 10000)


@dataclass
class SyncConfig:
    """Pairing images with poses, and the staleness checks."""

    pose_history: float = param(
        'Seconds of pose and joint-state history kept for interpolation.',
        default=2.0)
    max_pose_skew: float = param(
        'Max distance (s) from the image stamp to the nearest sample of every pose and of the '
        'joint states.',
        default=0.05)
    camera_tolerance: float = param(
        'Max spread (s) of image stamps grouped into one multi-camera observation.',
        default=0.02)
    max_observation_age: float = param(
        'An observation older than this (s, node clock) is never acted on.',
        default=0.5)
    max_future: float = param(
        'Stamps further than this (s) in the future of the node clock are rejected.',
        default=0.1)
    pose_frame_id: str = param(
        'Expected pose frame_id; empty = accept any.',
        default='')
    quaternion_tolerance: float = param(
        'Quaternions whose norm is off by more than this are rejected (else renormalized).',
        default=0.05)

    def __post_init__(self):
        for name in ('pose_history', 'max_pose_skew', 'camera_tolerance', 'max_observation_age'):
            require_positive(f'sync.{name}', getattr(self, name), MAX_AGE_S)
        require_positive('sync.quaternion_tolerance', self.quaternion_tolerance, 1.0)
        if not 0 <= self.max_future <= MAX_AGE_S:
            raise ConfigError(f'sync.max_future={self.max_future}: expected 0..{MAX_AGE_S:g}')


@dataclass
class ControlConfig:
    """The control-rate action output."""

    control_rate_hz: float = param(
        'Rate (Hz) of the action output.',
        default=50.0)
    ensemble_coeff: float = param(
        'ACT temporal ensembling: weight exp(-coeff * i) for the i-th oldest chunk; 0 = uniform; '
        'negative = newest chunk only.',
        default=0.01)
    late_fusion_refresh: bool = param(
        'Late fusion only: re-run the pose part with the newest pose at every tick.',
        default=True)

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

    action_min: list[float] = param(
        'Per-dimension lower clamp, one value per action name; empty = none.',
        factory=list)
    action_max: list[float] = param(
        'Per-dimension upper clamp, one value per action name; empty = none.',
        factory=list)
    max_step: list[float] = param(
        'Max change of each dimension between two consecutive actions; empty = none.',
        factory=list)
    workspace_dims: list[str] = param(
        'Absolute-target actions only: the action names the workspace box applies to.',
        factory=list)
    workspace_min: list[float] = param(
        'Workspace box lower bounds, one per workspace_dims entry.',
        factory=list)
    workspace_max: list[float] = param(
        'Workspace box upper bounds, one per workspace_dims entry.',
        factory=list)
    max_inference_time: float = param(
        'Inference slower than this (s) counts as a stall: actions stop until it recovers.',
        default=1.0)

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
        require_positive('safety.max_inference_time', self.max_inference_time, MAX_PERIOD_S)


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
    diagnostics_period: float = param(
        'Seconds between diagnostics messages.',
        default=1.0)
    log_throttle: float = param(
        'Minimum seconds between two log lines of the same kind (drops, errors).',
        default=5.0)
    domain_id: int = param(
        'DDS driver only: the DDS domain; -1 = ROS_DOMAIN_ID or 0 (rclpy uses ROS_DOMAIN_ID).',
        default=-1)

    def __post_init__(self):
        if not 0.01 <= self.diagnostics_period <= MAX_PERIOD_S:
            raise ConfigError(f'diagnostics_period={self.diagnostics_period}: expected '
                              f'0.01..{MAX_PERIOD_S:g} s')
        require_positive('log_throttle', self.log_throttle, MAX_PERIOD_S)
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


def load_node_config(path: str | Path | None = None, overrides: list[str] = ()) -> NodeConfig:
    """Read a YAML config (`vit_perception: ros__parameters:` or a plain mapping) + `key=value`s.

    Raises ConfigError with a one-line message on a bad file, unknown key or bad value.
    """
    data: dict = {}
    if path:
        path = Path(path)
        loaded = parse_yaml(read_config_text(path), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f'{path}: expected a mapping at the top level, got '
                              f'{type(loaded).__name__}')
        if NODE_NAME in loaded:
            loaded = loaded[NODE_NAME]
        data = loaded.get('ros__parameters', loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(data, dict):
            raise ConfigError(f'{path}: expected `{NODE_NAME}: ros__parameters:` to hold a '
                              f'mapping of parameters, got {type(data).__name__}')
        data = unflatten(data, str(path))
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'--set {short_repr(item)}: expected key=value, e.g. --set '
                              'control.control_rate_hz=100')
        value = parse_yaml(text, f'--set {key.strip()}') if text else ''
        set_dotted(data, key.strip(), value)
    return NodeConfig.from_dict(data)
