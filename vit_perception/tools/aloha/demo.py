"""What `vit-perception demo --task aloha-transfer-cube` adds to the demo: the shipped
checkpoint, the node parameters for the sim's topics and joint limits, the report."""

from __future__ import annotations

import json
from pathlib import Path

from vit_perception.tools.aloha import record
from vit_perception.tools.aloha.report import write_report

__all__ = ['DEFAULT_CHECKPOINT', 'node_overrides', 'write_report', 'JOINT_LIMITS']

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / 'data' / 'aloha_checkpoint'

# Per arm: the joint model's actuator control ranges (rad), the gripper normalized 0..1.
ARM_LIMITS = [(-3.14158, 3.14158), (-1.85005, 1.25664), (-1.76278, 1.6057),
              (-3.14158, 3.14158), (-1.8675, 2.23402), (-3.14158, 3.14158), (0.0, 1.0)]
JOINT_LIMITS = ARM_LIMITS * 2  # JOINT_NAMES order


def node_overrides() -> list[str]:
    """Node parameters: the sim's topics, and the joint limits as the node's action clamp."""
    return [*record.node_overrides(),
            f'safety.action_min={json.dumps([lo for lo, _ in JOINT_LIMITS])}',
            f'safety.action_max={json.dumps([hi for _, hi in JOINT_LIMITS])}']
