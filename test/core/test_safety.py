"""ActionLimiter: clamps by kind, workspace box, max step, non-finite rejection, config errors."""

import numpy as np
import pytest

from vit_perception.config import SafetyConfig
from vit_perception.core.safety import ActionLimiter
from vit_perception.errors import ConfigError

NAMES = ['x', 'y', 'z']


def counts_without_zeros(limiter):
    return {k: v for k, v in limiter.counts().items() if v}


def test_no_limits_passes_through():
    limiter = ActionLimiter(SafetyConfig(), NAMES)
    out = limiter.apply(np.array([5.0, -7.0, 1e6], dtype=np.float32))
    assert out.dtype == np.float64 and out.tolist() == [5.0, -7.0, 1e6]
    assert counts_without_zeros(limiter) == {}
    assert set(limiter.counts()) == {'nonfinite', 'action_range', 'workspace', 'max_step'}


def test_per_dimension_clamp_counts_once_per_action():
    cfg = SafetyConfig(action_min=[-1, -1, 0], action_max=[1, 1, 0.5])
    limiter = ActionLimiter(cfg, NAMES)
    assert limiter.apply([2.0, -3.0, 0.25]).tolist() == [1.0, -1.0, 0.25]
    assert limiter.apply([0.5, 0.5, 0.5]).tolist() == [0.5, 0.5, 0.5]  # on the limit: unchanged
    assert counts_without_zeros(limiter) == {'action_range': 1}


def test_workspace_box_only_on_named_dims():
    cfg = SafetyConfig(workspace_dims=['x', 'z'], workspace_min=[0.2, 0.0],
                       workspace_max=[0.8, 0.5])
    limiter = ActionLimiter(cfg, NAMES)
    assert limiter.apply([0.0, 9.0, 0.7]).tolist() == [0.2, 9.0, 0.5]
    assert limiter.apply([0.5, -9.0, 0.1]).tolist() == [0.5, -9.0, 0.1]
    assert counts_without_zeros(limiter) == {'workspace': 1}


def test_max_step_versus_previous_published_action():
    limiter = ActionLimiter(SafetyConfig(max_step=[0.1, 0.1, 0.2]), NAMES)
    assert limiter.apply([1.0, 1.0, 1.0]).tolist() == [1.0, 1.0, 1.0]  # first: no previous
    out = limiter.apply([2.0, 0.0, 1.05])
    assert out.tolist() == pytest.approx([1.1, 0.9, 1.05])
    out = limiter.apply([2.0, 0.0, 1.05])  # steps from the LIMITED previous action
    assert out.tolist() == pytest.approx([1.2, 0.8, 1.05])
    assert counts_without_zeros(limiter) == {'max_step': 2}
    limiter.reset()
    assert limiter.apply([-5.0, 0.0, 0.0]).tolist() == [-5.0, 0.0, 0.0]


def test_all_limits_in_order():
    cfg = SafetyConfig(action_min=[-1, -1, -1], action_max=[1, 1, 1], max_step=[0.5, 0.5, 0.5],
                       workspace_dims=['y'], workspace_min=[0.0], workspace_max=[0.3])
    limiter = ActionLimiter(cfg, NAMES)
    assert limiter.apply([0.0, 0.0, 0.0]).tolist() == [0.0, 0.0, 0.0]
    out = limiter.apply([5.0, 5.0, -0.2])  # range -> 1, 1; workspace y -> 0.3; step x -> 0.5
    assert out.tolist() == pytest.approx([0.5, 0.3, -0.2])
    assert counts_without_zeros(limiter) == {'action_range': 1, 'workspace': 1, 'max_step': 1}


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_never_published(bad):
    limiter = ActionLimiter(SafetyConfig(max_step=[0.1, 0.1, 0.1]), NAMES)
    limiter.apply([0.0, 0.0, 0.0])
    assert limiter.apply([0.0, bad, 0.0]) is None
    assert counts_without_zeros(limiter) == {'nonfinite': 1}
    # the rejected action did not become "previous"
    assert limiter.apply([0.05, 0.0, 0.0]).tolist() == [0.05, 0.0, 0.0]


def test_wrong_action_length_raises():
    limiter = ActionLimiter(SafetyConfig(), NAMES)
    with pytest.raises(ValueError, match='expected 3'):
        limiter.apply([1.0, 2.0])


@pytest.mark.parametrize('kwargs, field', [
    ({'action_min': [0, 0], 'action_max': [1, 1]}, 'safety.action_min'),
    ({'max_step': [0.1]}, 'safety.max_step'),
    ({'workspace_dims': ['q'], 'workspace_min': [0], 'workspace_max': [1]},
     'safety.workspace_dims'),
    ({'workspace_dims': ['x'], 'workspace_min': [1], 'workspace_max': [0]},
     'safety.workspace_min'),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace('.', r'\.')) as err:
        ActionLimiter(SafetyConfig(**kwargs), NAMES)
    assert '\n' not in str(err.value)
