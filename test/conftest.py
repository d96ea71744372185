"""Fixtures shared by the test folders (pytest runs with --import-mode=importlib, so test
modules take these as fixtures; the classes live in test/doubles.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test/doubles.py (importlib mode)
from doubles import CapturingTransport, FakeEngine, RecordingCore  # noqa: E402


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def two_arm_engine() -> FakeEngine:
    """Arms 'left' and 'right', joints 'j0' and 'j1'."""
    return FakeEngine(arms=['left', 'right'], proprio_names=['j0', 'j1'])


@pytest.fixture
def recording_core() -> RecordingCore:
    return RecordingCore()


@pytest.fixture
def capturing_transport() -> CapturingTransport:
    return CapturingTransport()


@pytest.fixture(scope='session')
def bags(tmp_path_factory) -> Path:
    """Three short expert episodes of the sim at 32 px (seeds 0, 1, 2), recorded once per
    session (a test module may define its own `bags`)."""
    from vit_perception.tools.sim.record import record_episodes

    root = tmp_path_factory.mktemp('expert_bags')
    record_episodes(root / 'demos', 3, seed=0, image_size=32, max_steps=8)
    return root / 'demos'
