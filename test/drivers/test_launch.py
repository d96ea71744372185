"""Launch test: robot.launch.py starts the node, which answers images + poses on every output.

ROS 2 only (skipped elsewhere). Run with `colcon test --packages-select vit_perception`, or
`launch_test test/drivers/test_launch.py` in a sourced workspace where the package is built.
The test feeds 32x32 images (10 Hz) and poses (50 Hz) stamped with the current time, waits for
embedding, action chunk, action and diagnostics, then checks the node exits cleanly (code 0)
when launch shuts it down.
"""

import array
import threading
import unittest

import pytest

pytest.importorskip('launch_testing')
pytest.importorskip('launch_testing_ros')
pytest.importorskip('vit_perception.msg', reason='build the package with colcon first')

import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description import LaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from launch.substitutions import PathJoinSubstitution  # noqa: E402
from launch_ros.substitutions import FindPackageShare  # noqa: E402
from launch_testing_ros import WaitForTopics  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vit_perception.msg import ActionChunk, Embedding  # noqa: E402

OUTPUTS = [('/vit_perception/embedding', Embedding),
           ('/vit_perception/action_chunk', ActionChunk),
           ('/vit_perception/action', ActionChunk), ('/diagnostics', DiagnosticArray)]


@pytest.mark.launch_test
def generate_test_description():
    robot = IncludeLaunchDescription(PythonLaunchDescriptionSource(PathJoinSubstitution(
        [FindPackageShare('vit_perception'), 'launch', 'robot.launch.py'])))
    return LaunchDescription([robot, launch_testing.actions.ReadyToTest()])


class Feeder:
    """Publishes images and poses stamped with the current time from its own thread."""

    def __init__(self):
        self.node = rclpy.create_node('vit_perception_launch_test_feeder')
        self.images = self.node.create_publisher(Image, '/camera/image_raw', 5)
        self.poses = self.node.create_publisher(PoseStamped, '/ee_pose', 10)
        self.node.create_timer(0.1, self.publish_image)
        self.node.create_timer(0.02, self.publish_pose)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def publish_image(self):
        msg = Image()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = 'camera'
        msg.height, msg.width, msg.encoding, msg.step = 32, 32, 'rgb8', 96
        msg.data = array.array('B', bytes(range(96)) * 32)
        self.images.publish(msg)

    def publish_pose(self):
        msg = PoseStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = 'base_link'
        msg.pose.position.x, msg.pose.position.z, msg.pose.orientation.w = 0.4, 0.3, 1.0
        self.poses.publish(msg)

    def stop(self):
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()


class TestPerceptionNode(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.feeder = Feeder()

    @classmethod
    def tearDownClass(cls):
        cls.feeder.stop()
        rclpy.shutdown()

    def test_configures_then_publishes_every_output(self, proc_output):
        proc_output.assertWaitFor('configured:', timeout=120)
        waiter = WaitForTopics(OUTPUTS, timeout=120.0)
        try:
            received = waiter.wait()
            self.assertTrue(received, f'no message on {waiter.topics_not_received()}')
            self.assertEqual(waiter.topics_received(), {name for name, _ in OUTPUTS})
        finally:
            waiter.shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_code_zero(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
