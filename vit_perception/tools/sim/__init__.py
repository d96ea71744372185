"""MuJoCo reach task: scene, scripted expert, bag recorder and the sim process on ROS topics."""
