"""vit_perception: a Vision Transformer policy with pose tokens for ROS 2 robot arms."""

import os

# Thread policy for a shared CPU (README "Thread policy", measured): torch's OpenMP (libgomp)
# threads spin while they wait, so when another process holds a core every parallel region
# stalls (ViT-T p50 1.2-3.5 s instead of ~0.2 s with two busy neighbours). PASSIVE makes them
# sleep. libgomp reads it once, when torch loads: hence here, before torch, unless already set.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

__version__ = '0.1.0'
