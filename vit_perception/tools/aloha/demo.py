"""What `vit-perception demo --task aloha-transfer-cube` adds to the demo: the shipped
checkpoint, the node parameters for the sim's topics and joint limits, the report."""

from __future__ import annotations

import json
from pathlib import Path

from vit_perception.tools.aloha.recipe import IMAGE_HEIGHT
from vit_perception.tools.aloha.record import AlohaTopics
from vit_perception.tools.aloha.report import write_report

__all__ = ['DEFAULT_CHECKPOINT', 'IMAGE_HEIGHT', 'JOINT_LIMITS', 'node_parameters',
           'node_overrides', 'write_report']

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / 'data' / 'aloha_checkpoint'

# Per arm: the joint model's actuator control ranges (rad), the gripper normalized 0..1.
ARM_LIMITS = [(-3.14158, 3.14158), (-1.85005, 1.25664), (-1.76278, 1.6057),
              (-3.14158, 3.14158), (-1.8675, 2.23402), (-3.14158, 3.14158), (0.0, 1.0)]
JOINT_LIMITS = ARM_LIMITS * 2  # JOINT_NAMES order


def node_parameters(arms: list[str] = ('left', 'right'),
                    topics: AlohaTopics = AlohaTopics()) -> dict[str, object]:
    """Node parameters (dotted) for the ALOHA sim: its topics (the pose topics of the
    checkpoint's `pose.arms`, in order), and the joint limits as the node's action clamp (the
    one place limits are enforced)."""
    by_arm = dict(zip(('left', 'right'), topics.poses))
    return {'topics.cameras': [topics.image], 'topics.poses': [by_arm[arm] for arm in arms],
            'topics.joint_states': topics.joint_states,
            'safety.action_min': [lo for lo, _ in JOINT_LIMITS],
            'safety.action_max': [hi for _, hi in JOINT_LIMITS]}


def node_overrides(checkpoint: Path | None = None) -> list[str]:
    """node_parameters for the checkpoint's arms as `--set key=value` items (values JSON, which
    YAML reads)."""
    arms = ['left', 'right']
    if checkpoint is not None:
        arms = json.loads((Path(checkpoint) / 'config.json').read_text())['pose']['arms']
    return [f'{key}={json.dumps(value)}' for key, value in node_parameters(arms).items()]
