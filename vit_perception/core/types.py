"""Plain data exchanged between drivers and the core. No ROS, no DDS, no torch.

Time is integer nanoseconds everywhere (`stamp_ns`), as in builtin_interfaces/Time, so stamps
round-trip exactly and replay is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NS_PER_S = 1_000_000_000


def to_ns(sec: int, nanosec: int) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(sec) * NS_PER_S + int(nanosec)


def from_ns(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) of builtin_interfaces/Time."""
    return divmod(int(stamp_ns), NS_PER_S)


@dataclass(frozen=True)
class ImageFrame:
    """One camera image as sensor_msgs/Image or sensor_msgs/CompressedImage carries it.

    Raw: `encoding` is e.g. 'rgb8', `data` holds `step * height` bytes.
    Compressed: `format` is non-empty (e.g. 'jpeg', 'png', 'rgb8; jpeg compressed bgr8') and
    `data` holds the file bytes; height/width/encoding/step are unused (0 / '').
    """

    stamp_ns: int
    frame_id: str
    data: bytes | bytearray | memoryview | np.ndarray
    height: int = 0
    width: int = 0
    encoding: str = ''
    step: int = 0
    is_bigendian: bool = False
    format: str = ''
    # Index of the camera in the checkpoint's camera list.
    camera: int = 0

    @property
    def compressed(self) -> bool:
        return bool(self.format)


@dataclass(frozen=True)
class PoseSample:
    """End-effector pose (geometry_msgs/PoseStamped): position xyz (m), quaternion xyzw."""

    stamp_ns: int
    frame_id: str
    position: np.ndarray  # (3,) float64
    orientation: np.ndarray  # (4,) float64, x y z w (ROS order)
    # Index of the arm in the checkpoint's pose.arms.
    arm: int = 0


@dataclass(frozen=True)
class JointSample:
    """Joint positions (sensor_msgs/JointState) of the checkpoint's pose.proprio_names, in
    that order."""

    stamp_ns: int
    positions: np.ndarray  # (P,) float64


@dataclass(frozen=True)
class Observation:
    """A synchronized input for one inference: every camera's image + every arm's pose (and the
    joint positions, when the checkpoint reads them) at their time."""

    stamp_ns: int  # the (reference camera) image stamp; poses are interpolated to it
    frames: tuple[ImageFrame, ...]  # one per camera, in checkpoint camera order
    poses: tuple[PoseSample, ...]  # one per arm, in checkpoint arm order, at stamp_ns
    proprio: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (P,) at stamp_ns
    pose_skew_ns: int = 0  # largest distance from stamp_ns to the nearest real sample of an input
    camera_spread_ns: int = 0  # max - min image stamp across cameras

    @property
    def pose(self) -> PoseSample:
        """The first arm's pose."""
        return self.poses[0]


@dataclass(frozen=True)
class ActionChunkResult:
    """Model output for one observation."""

    observation_stamp_ns: int
    embedding: np.ndarray  # (D,) float32
    chunk: np.ndarray  # (H, A) float32
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
