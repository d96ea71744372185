"""Run the perception node on a robot.

    ros2 launch vit_perception robot.launch.py camera_topic:=/wrist/image_raw \
        pose_topic:=/arm/ee_pose model:=/path/to/checkpoint

Arguments: config (parameters file, default share/vit_perception/config/default.yaml), model
(checkpoint directory; empty = engine.model from the config), camera_topic / pose_topic
(remap the default /camera/image_raw and /ee_pose), use_sim_time, twist_topic (sets the
parameter topics.twist: each action also as TwistStamped; empty = the config's), log_level.
Included by replay.launch.py and sim.launch.py.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    DeclareLaunchArgument(
        'config', default_value=PathJoinSubstitution(
            [FindPackageShare('vit_perception'), 'config', 'default.yaml']),
        description='parameters file (vit_perception: ros__parameters: ...)'),
    DeclareLaunchArgument('model', default_value='',
                          description='checkpoint directory; empty = engine.model of the config'),
    DeclareLaunchArgument('camera_topic', default_value='/camera/image_raw',
                          description='image topic (remaps /camera/image_raw)'),
    DeclareLaunchArgument('pose_topic', default_value='/ee_pose',
                          description='end-effector PoseStamped topic (remaps /ee_pose)'),
    DeclareLaunchArgument('use_sim_time', default_value='false', choices=['true', 'false'],
                          description='use /clock (bag replay, simulation)'),
    DeclareLaunchArgument('twist_topic', default_value='',
                          description='topics.twist: also publish each action as '
                                      "TwistStamped here; empty = the config's"),
    DeclareLaunchArgument('log_level', default_value='info',
                          choices=['debug', 'info', 'warn', 'error'],
                          description='node log level'),
]


def perception_node(context):
    """The node, built from the evaluated arguments (only non-empty ones override the config)."""
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    parameters = [arg('config'), {'use_sim_time': arg('use_sim_time') == 'true'}]
    if arg('model'):
        parameters.append({'engine.model': arg('model')})
    if arg('twist_topic'):
        parameters.append({'topics.twist': arg('twist_topic')})
    return [Node(
        package='vit_perception', executable='perception_node', name='vit_perception',
        output='screen', parameters=parameters,
        remappings=[('/camera/image_raw', arg('camera_topic')), ('/ee_pose', arg('pose_topic'))],
        arguments=['--ros-args', '--log-level', arg('log_level')])]


def generate_launch_description():
    return LaunchDescription([*ARGUMENTS, OpaqueFunction(function=perception_node)])
