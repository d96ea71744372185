"""ALOHA bimanual transfer-cube (ACT paper) in plain MuJoCo: scene, scripted expert, bags, and
the sim process on ROS 2 topics."""
