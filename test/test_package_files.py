"""The ROS 2 package files, checked without ROS: they parse, and they agree with the code.

config/default.yaml == NodeConfig(), package.xml lists what the code imports, CMakeLists.txt
installs every message, launch file, config and world, the launch files agree on their
arguments, and the Gazebo bridge agrees with the world and the node's topics.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from vit_perception.config import NODE_NAME, NodeConfig, load_node_config
from vit_perception.schema import flatten

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
DEFAULTS = flatten(dataclasses.asdict(NodeConfig()))

# Python module -> rosdep key, where they differ.
ROSDEP_KEYS = {'tf2_ros': 'tf2_ros_py', 'numpy': 'python3-numpy', 'cv2': 'python3-opencv',
               'yaml': 'python3-yaml', 'pytest': 'python3-pytest'}
PIP_ONLY = {'torch', 'transformers', 'safetensors',  # no rosdep keys: README says pip install
            'openvino', 'onnxruntime', 'onnx'}  # the optional extra `runtimes`


def read(relative: str) -> str:
    return (ROOT / relative).read_text()


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in a Python file (nested imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def rosdep_keys(paths) -> set[str]:
    """The rosdep keys the given files need (stdlib, this package and pip-only left out)."""
    modules = set().union(*(imported_modules(p) for p in paths))
    modules -= set(sys.stdlib_module_names) | PIP_ONLY | {'vit_perception', '__future__'}
    return {ROSDEP_KEYS.get(name, name) for name in modules}


def package_deps(*tags: str) -> set[str]:
    root = ET.parse(ROOT / 'package.xml').getroot()
    return {element.text.strip() for tag in tags for element in root.findall(tag)}


# ------------------------------------------------------------------------------------------
# config/default.yaml
# ------------------------------------------------------------------------------------------

def test_default_yaml_loads_to_the_default_node_config():
    loaded = load_node_config(ROOT / 'config' / 'default.yaml')
    got = flatten(dataclasses.asdict(loaded))
    for name, value in DEFAULTS.items():
        assert got[name] == value, name
    assert loaded == NodeConfig()


def test_default_yaml_lists_every_parameter_with_the_ros_type():
    data = yaml.safe_load(read('config/default.yaml'))
    assert list(data) == [NODE_NAME] and list(data[NODE_NAME]) == ['ros__parameters']
    written = flatten(data[NODE_NAME]['ros__parameters'])
    assert set(written) == set(DEFAULTS)
    for name, value in DEFAULTS.items():
        # ROS types the file's values itself: 50 would be an integer where a double is expected.
        assert type(written[name]) is type(value), name


# ------------------------------------------------------------------------------------------
# package.xml
# ------------------------------------------------------------------------------------------

def test_package_xml_is_an_ament_cmake_interface_package():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'vit_perception'
    assert root.findtext('export/build_type') == 'ament_cmake'
    assert root.findtext('member_of_group') == 'rosidl_interface_packages'
    assert {'ament_cmake', 'ament_cmake_python', 'rosidl_default_generators'} <= package_deps(
        'buildtool_depend')
    assert 'rosidl_default_runtime' in package_deps('exec_depend')
    version = re.search(r"version='([^']+)'", read('setup.py')).group(1)
    assert root.findtext('version') == version


def test_package_xml_lists_what_the_ros_side_imports():
    runtime = [ROOT / 'vit_perception' / 'drivers' / 'ros_node.py',
               ROOT / 'vit_perception' / 'config.py', ROOT / 'vit_perception' / 'schema.py',
               ROOT / 'vit_perception' / 'model' / 'config.py',
               *sorted((ROOT / 'vit_perception' / 'core').glob('*.py')), *LAUNCH_FILES]
    tests = [ROOT / 'test' / 'drivers' / 'test_ros_node.py',
             ROOT / 'test' / 'drivers' / 'test_launch.py']
    exec_deps = package_deps('depend', 'exec_depend')
    assert rosdep_keys(runtime) - exec_deps == set()
    assert rosdep_keys(tests) - exec_deps - package_deps('test_depend') == set()
    # Message packages the code only names as strings (launch tests, bridge) are listed too.
    assert {'rosgraph_msgs', 'ros2bag', 'rosbag2_storage_mcap', 'ros_gz_sim',
            'ros_gz_bridge'} <= exec_deps


def package_imports(module: str) -> set[str]:
    """Every vit_perception module `module` imports, directly or through others (nested imports
    included), found by reading the source."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = ROOT / Path(*name.split('.'))
        path = path / '__init__.py' if path.is_dir() else path.with_suffix('.py')
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for other in found:
                if other.startswith('vit_perception.') and other not in seen:
                    seen.add(other)
                    todo.append(other)
    return seen


@pytest.mark.parametrize('module', ['vit_perception.model.checkpoint',
                                    'vit_perception.model.onnx_graphs',
                                    'vit_perception.model.pretraining', 'vit_perception.schema'])
def test_the_model_and_the_parsing_never_import_the_node_config(module):
    imported = package_imports(module)
    assert 'vit_perception.config' not in imported  # the node builds on the model, not reverse
    assert not {name for name in imported if name.startswith(('vit_perception.drivers',
                                                             'vit_perception.tools'))}
    if module != 'vit_perception.schema':
        assert {'vit_perception.model.config', 'vit_perception.schema'} <= imported


def test_message_dependencies_agree_between_package_xml_and_cmake():
    cmake = read('CMakeLists.txt')
    block = re.search(r'rosidl_generate_interfaces\((.*?)\)', cmake, re.S).group(1)
    deps = set(block.split('DEPENDENCIES')[1].split())
    assert deps == {'builtin_interfaces', 'std_msgs'}
    assert deps <= package_deps('depend')
    for dep in deps:
        assert f'find_package({dep} REQUIRED)' in cmake
    used = set(re.findall(r'^(\w+)/\w+\s', '\n'.join(
        (ROOT / 'msg' / name).read_text() for name in ('Embedding.msg', 'ActionChunk.msg')),
        re.M))
    assert used <= deps


# ------------------------------------------------------------------------------------------
# CMakeLists.txt
# ------------------------------------------------------------------------------------------

def test_cmake_generates_every_message_file():
    messages = sorted(p.name for p in (ROOT / 'msg').glob('*.msg'))
    assert {'Embedding.msg', 'ActionChunk.msg'} <= set(messages)
    block = re.search(r'rosidl_generate_interfaces\((.*?)\)', read('CMakeLists.txt'), re.S)
    assert sorted(re.findall(r'"msg/(\w+\.msg)"', block.group(1))) == messages


def test_cmake_installs_every_launch_config_world_and_the_executable():
    cmake = read('CMakeLists.txt')
    for folder, pattern in (('launch', '*.launch.py'), ('config', '*.yaml'),
                            ('worlds', '*.sdf')):
        files = sorted((ROOT / folder).glob(pattern))
        assert files, folder
        for path in files:
            assert f'{folder}/{path.name}' in cmake, path.name
        assert f'DESTINATION share/${{PROJECT_NAME}}/{folder}' in cmake
    assert re.search(r'install\(PROGRAMS\s+scripts/perception_node\s+DESTINATION '
                     r'lib/\$\{PROJECT_NAME\}', cmake)


def test_cmake_installs_the_python_package_after_the_generated_messages():
    cmake = read('CMakeLists.txt')
    assert 'ament_python_install_package' not in re.sub(r'#.*', '', cmake)
    rule = cmake.index('install(DIRECTORY vit_perception/')
    assert cmake.index('rosidl_generate_interfaces(${PROJECT_NAME}') < rule
    assert 'DESTINATION "${PYTHON_INSTALL_DIR}/${PROJECT_NAME}"' in cmake[rule:]
    # The generated vit_perception/msg package goes there; the sources must not have one.
    assert not (ROOT / 'vit_perception' / 'msg').exists()


def test_cmake_registers_the_tests_it_names():
    cmake = read('CMakeLists.txt')
    for path in re.findall(r'(test/[\w/]+\.py)', cmake):
        assert (ROOT / path).is_file(), path


# ------------------------------------------------------------------------------------------
# Executable and launch files
# ------------------------------------------------------------------------------------------

def test_perception_node_script():
    path = ROOT / 'scripts' / 'perception_node'
    text = path.read_text()
    assert text.startswith('#!/usr/bin/env python3\n')
    assert os.access(path, os.X_OK)
    compile(text, str(path), 'exec')
    assert 'from vit_perception.drivers.ros_node import main' in text


def declared_arguments(tree: ast.AST) -> set[str]:
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, 'id', '') ==
            'DeclareLaunchArgument' and node.args and isinstance(node.args[0], ast.Constant)}


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles_and_defines_its_description(path):
    tree = ast.parse(path.read_text(), str(path))
    compile(tree, str(path), 'exec')
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    assert ast.get_docstring(tree)


def test_launch_files_pass_robot_launch_only_arguments_it_declares():
    robot = declared_arguments(ast.parse(read('launch/robot.launch.py')))
    assert {'config', 'model', 'camera_topic', 'pose_topic', 'use_sim_time',
            'twist_topic'} <= robot
    replay = ast.parse(read('launch/replay.launch.py'))
    passed_on = next(ast.literal_eval(node.value) for node in replay.body
                     if isinstance(node, ast.Assign) and node.targets[0].id == 'PASSED_ON')
    assert set(passed_on) | {'use_sim_time'} <= robot
    assert set(passed_on) <= declared_arguments(replay)
    sim = ast.parse(read('launch/sim.launch.py'))
    for call in ast.walk(sim):
        keywords = {k.arg: k.value for k in getattr(call, 'keywords', [])}
        if isinstance(call, ast.Call) and 'launch_arguments' in keywords and any(
                isinstance(n, ast.Constant) and n.value == 'robot.launch.py'
                for n in ast.walk(call)):
            names = {item.elts[0].value for item in keywords['launch_arguments'].elts}
            assert names == {'use_sim_time', 'twist_topic', 'config', 'model'}
            assert names <= robot
            break
    else:
        pytest.fail('sim.launch.py does not include robot.launch.py')


def test_launch_files_set_only_node_config_parameters():
    for path in LAUNCH_FILES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if path.name != 'sim.launch.py':  # sim's dict configures the bridge node
                    assert keys <= set(DEFAULTS) | {'use_sim_time'}, (path.name, keys)
    assert "{'topics.twist': arg('twist_topic')}" in read('launch/robot.launch.py')


# ------------------------------------------------------------------------------------------
# Gazebo: bridge <-> world <-> node
# ------------------------------------------------------------------------------------------

def bridge() -> dict[str, dict]:
    entries = yaml.safe_load(read('config/gz_bridge.yaml'))
    assert isinstance(entries, list)
    for entry in entries:
        assert set(entry) == {'ros_topic_name', 'gz_topic_name', 'ros_type_name',
                              'gz_type_name', 'direction'}, entry
        assert entry['direction'] in ('GZ_TO_ROS', 'ROS_TO_GZ'), entry
        assert entry['gz_type_name'].startswith('gz.msgs.'), entry
    return {entry['ros_type_name']: entry for entry in entries}


def test_bridge_feeds_the_node_its_default_topics():
    entries = bridge()
    assert entries['sensor_msgs/msg/Image']['ros_topic_name'] == DEFAULTS['topics.cameras'][0]
    pose_topic = entries['geometry_msgs/msg/PoseStamped']['ros_topic_name']
    assert pose_topic == DEFAULTS['topics.poses'][0]
    assert entries['rosgraph_msgs/msg/Clock']['ros_topic_name'] == '/clock'
    for type_name in ('sensor_msgs/msg/Image', 'geometry_msgs/msg/PoseStamped',
                      'rosgraph_msgs/msg/Clock'):
        assert entries[type_name]['direction'] == 'GZ_TO_ROS'
    twist = entries['geometry_msgs/msg/TwistStamped']
    assert twist['direction'] == 'ROS_TO_GZ'
    sim = ast.parse(read('launch/sim.launch.py'))
    twist_topic = next(node.value.value for node in sim.body if isinstance(node, ast.Assign)
                       and node.targets[0].id == 'TWIST_TOPIC')
    assert twist['ros_topic_name'] == twist_topic


def test_world_publishes_what_the_bridge_reads():
    world = ET.parse(ROOT / 'worlds' / 'ee_camera.sdf').getroot().find('world')
    entries = bridge()
    camera_topic = world.find(".//sensor[@type='camera']/topic").text
    assert '/' + camera_topic.lstrip('/') == entries['sensor_msgs/msg/Image']['gz_topic_name']
    ee = world.find("model[@name='ee']")
    plugins = {plugin.get('name') for plugin in ee.findall('plugin')}
    assert {'gz::sim::systems::VelocityControl', 'gz::sim::systems::PosePublisher'} <= plugins
    assert entries['geometry_msgs/msg/PoseStamped']['gz_topic_name'] == '/model/ee/pose'
    assert entries['geometry_msgs/msg/TwistStamped']['gz_topic_name'] == '/model/ee/cmd_vel'
    assert ee.findtext('link/gravity') == 'false'
    systems = {plugin.get('name') for plugin in world.findall('plugin')}
    assert {'gz::sim::systems::Physics', 'gz::sim::systems::Sensors',
            'gz::sim::systems::SceneBroadcaster'} <= systems
