"""Gazebo simulation: a camera, a floating end effector, and the perception node driving it.

    ros2 launch vit_perception sim.launch.py            # Gazebo Harmonic (ROS 2 Jazzy)
    ros2 launch vit_perception sim.launch.py gz_args:='-r -s --headless-rendering'

Starts `gz sim` with worlds/ee_camera.sdf (ros_gz_sim's gz_sim.launch.py), the ros_gz_bridge
parameter_bridge with config/gz_bridge.yaml (camera image, end-effector pose, /clock into ROS;
the action as TwistStamped on /ee/cmd_vel back to Gazebo) and robot.launch.py with
use_sim_time:=true and twist_topic:=/ee/cmd_vel (the node's topics.twist). The topic mapping
is documented in config/gz_bridge.yaml. For the MuJoCo scene use `vit-perception sim`.
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

TWIST_TOPIC = '/ee/cmd_vel'  # ROS side of the cmd_vel bridge in config/gz_bridge.yaml


def generate_launch_description():
    share = FindPackageShare('vit_perception')
    gazebo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution(
            [FindPackageShare('ros_gz_sim'), 'launch', 'gz_sim.launch.py'])),
        launch_arguments=[('gz_args', [LaunchConfiguration('gz_args'), ' ',
                                       LaunchConfiguration('world')])])
    bridge = Node(
        package='ros_gz_bridge', executable='parameter_bridge', name='gz_bridge',
        output='screen', parameters=[{
            'config_file': PathJoinSubstitution([share, 'config', 'gz_bridge.yaml']),
            'use_sim_time': True}])
    perception = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, 'launch', 'robot.launch.py'])),
        launch_arguments=[('use_sim_time', 'true'), ('twist_topic', TWIST_TOPIC),
                          ('config', LaunchConfiguration('config')),
                          ('model', LaunchConfiguration('model'))])
    return LaunchDescription([
        DeclareLaunchArgument('world', default_value=PathJoinSubstitution(
            [share, 'worlds', 'ee_camera.sdf']), description='SDF world'),
        DeclareLaunchArgument('gz_args', default_value='-r',
                              description="gz sim options; '-r -s --headless-rendering' for a "
                                          'headless server'),
        DeclareLaunchArgument('config', default_value=PathJoinSubstitution(
            [share, 'config', 'default.yaml'])),
        DeclareLaunchArgument('model', default_value=''),
        gazebo, bridge, perception,
    ])
