"""vit_perception: a Vision Transformer policy with pose tokens for ROS 2 robot arms."""

__version__ = '0.1.0'
