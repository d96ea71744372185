"""Replay a ROS 2 bag into the perception node, on the bag's clock.

    ros2 launch vit_perception replay.launch.py bag:=/path/to/bag rate:=1.0

`ros2 bag play BAG --clock 100 --rate RATE` starts `delay` seconds after the node (time to load
and warm the model) and publishes /clock; the node runs with use_sim_time:=true. The launch
ends when the bag has been played. Other arguments are passed on to robot.launch.py.
For a deterministic offline evaluation (output bag + report) use `vit-perception replay BAG`.
"""

from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    ExecuteProcess,
    IncludeLaunchDescription,
    RegisterEventHandler,
    TimerAction,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PASSED_ON = ('config', 'model', 'camera_topic', 'pose_topic', 'log_level')


def generate_launch_description():
    robot = PathJoinSubstitution([FindPackageShare('vit_perception'), 'launch',
                                  'robot.launch.py'])
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', LaunchConfiguration('bag'), '--clock', '100',
             '--rate', LaunchConfiguration('rate')],
        output='screen')
    return LaunchDescription([
        DeclareLaunchArgument('bag', description='bag folder or file (.db3, .mcap)'),
        DeclareLaunchArgument('rate', default_value='1.0', description='playback rate'),
        DeclareLaunchArgument('delay', default_value='5.0',
                              description='seconds between node start and bag start'),
        DeclareLaunchArgument('config', default_value=PathJoinSubstitution(
            [FindPackageShare('vit_perception'), 'config', 'default.yaml'])),
        DeclareLaunchArgument('model', default_value=''),
        DeclareLaunchArgument('camera_topic', default_value='/camera/image_raw'),
        DeclareLaunchArgument('pose_topic', default_value='/ee_pose'),
        DeclareLaunchArgument('log_level', default_value='info'),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(robot),
            launch_arguments=[('use_sim_time', 'true')] + [
                (name, LaunchConfiguration(name)) for name in PASSED_ON]),
        TimerAction(period=LaunchConfiguration('delay'), actions=[play]),
        RegisterEventHandler(OnProcessExit(
            target_action=play,
            on_exit=[EmitEvent(event=Shutdown(reason='bag played to the end'))])),
    ])
