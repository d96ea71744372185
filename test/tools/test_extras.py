"""The extras each command needs: setup.py declares them, the CLI names the missing ones."""

import runpy
from pathlib import Path
from unittest import mock

import pytest

from vit_perception.errors import ConfigError
from vit_perception.tools import cli, extras

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def setup_extras():
    with mock.patch('setuptools.setup') as setup:
        runpy.run_path(str(ROOT / 'setup.py'))
    return setup.call_args.kwargs['extras_require']


def hide(monkeypatch, *modules):
    real = extras.importable
    monkeypatch.setattr(extras, 'importable', lambda name: name not in modules and real(name))


def parse(*argv):
    return cli.build_parser().parse_args(argv)


def test_every_extra_the_cli_names_is_in_setup_py(setup_extras):
    assert set(extras.PROVIDES) <= set(setup_extras)
    assert {e for needs in extras.NEEDS.values() for e in needs} <= set(extras.PROVIDES)


def test_all_is_every_extra_and_test_adds_the_test_tools(setup_extras):
    others = {name: reqs for name, reqs in setup_extras.items() if name not in ('all', 'test')}
    assert set(setup_extras['all']) == {req for reqs in others.values() for req in reqs}
    assert set(setup_extras['all']) < set(setup_extras['test'])
    tools = {req.split('>')[0].split('=')[0] for req in setup_extras['test']}
    assert {'pytest', 'pytest-timeout', 'hypothesis', 'ruff'} <= tools


def test_test_tools_are_bounded_above(setup_extras):
    for req in setup_extras['test']:
        if req.startswith(('pytest', 'hypothesis', 'ruff')):
            assert '<' in req, req


@pytest.mark.parametrize('argv, hidden, expected', [
    (['demo'], ['mujoco', 'cyclonedds'], ['dds', 'sim']),
    (['demo'], ['matplotlib'], ['eval']),
    (['bench'], ['PIL'], ['bench']),
    (['bench', '--live'], ['cyclonedds'], ['dds']),
    (['replay', 'bag'], ['rosbags'], ['eval']),
    (['sim'], ['mujoco'], ['sim']),
    (['node', '--backend', 'dds'], ['cyclonedds', 'mujoco'], ['dds']),
])
def test_check_names_exactly_the_missing_extras(monkeypatch, argv, hidden, expected):
    hide(monkeypatch, *hidden)
    with pytest.raises(ConfigError) as err:
        extras.check(parse(*argv))
    message = str(err.value)
    assert '\n' not in message
    assert f"pip install -e '.[{','.join(expected)}]'" in message
    assert f"extra{'s' if len(expected) > 1 else ''} {', '.join(expected)} (" in message


def test_nothing_missing_passes(monkeypatch):
    hide(monkeypatch)
    for argv in (['demo'], ['bench', '--soak', '5'], ['node', '--backend', 'dds']):
        assert extras.check(parse(*argv)) is None


def test_ros_backend_needs_no_extra(monkeypatch):
    hide(monkeypatch, 'cyclonedds', 'rosbags', 'mujoco', 'PIL', 'matplotlib')
    assert extras.needed(parse('node', '--backend', 'ros')) == ()
    assert extras.check(parse('node', '--backend', 'ros')) is None


def test_cli_prints_one_line_and_exits_2(monkeypatch, capsys):
    hide(monkeypatch, 'mujoco')
    assert cli.main(['sim']) == 2
    assert capsys.readouterr().err.splitlines() == [
        "vit-perception sim: error: needs the extra sim (missing mujoco): "
        "pip install -e '.[sim]' in the vit_perception checkout"]
