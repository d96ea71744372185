"""pip install for the ROS-free parts (core, DDS/bag drivers, tools).

ROS 2 users build with colcon instead (ament_cmake: CMakeLists.txt + package.xml).
"""

from glob import glob
from itertools import chain

from setuptools import find_packages, setup

TORCH = 'torch>=2.4,<2.14'  # tested: 2.13.0 (CPU, CI), 2.11 (CUDA)
TRANSFORMERS = 'transformers>=5.0,<6'  # tested: 5.23 (5.x moved ViTModel.encoder.layer to .layers)

ROSBAGS = 'rosbags>=0.10,<0.12'
# One entry per optional feature; `all` is their union, so a new extra only needs its line here
# (and, if a command needs it, a line in vit_perception/tools/extras.py).
EXTRAS = {
    'dds': ['cyclonedds==11.0.1', ROSBAGS],  # the ROS-wire DDS node, bags
    'eval': [ROSBAGS, 'matplotlib>=3.7', 'tqdm>=4.60'],  # replay reports, training progress
    'sim': ['mujoco>=3.1,<5'],  # the MuJoCo scene (sim, demo)
    'bench': ['pillow>=10', 'psutil>=5.9'],  # HF image processor (naive pipeline), node RSS
    # LeRobotDataset v3.0 I/O; tested: pyarrow 26.0.1, av 18.1.0
    'lerobot': ['pyarrow>=21,<27', 'av>=14,<19'],
    # ONNX graphs and the OpenVINO / ONNX Runtime backends; tested: openvino 2026.4.1,
    # onnxruntime 1.32.0 (1.23.2 on Python 3.10: the last release with cp310 wheels), onnx
    # 1.23.2, onnxscript 0.7.2 (torch's exporter)
    'runtimes': ['openvino>=2026.4,<2027', "onnxruntime>=1.32,<1.33; python_version>='3.11'",
                 "onnxruntime>=1.23,<1.24; python_version<'3.11'", 'onnx>=1.23,<1.24',
                 'onnxscript>=0.7,<0.8'],
}
# The ALOHA transfer-cube benchmark (sim, demo --task aloha-transfer-cube): plain MuJoCo with the
# MJCF assets shipped in the package (from gym-aloha, Apache-2.0), the DDS wire, reports.
EXTRAS['aloha'] = sorted(set(EXTRAS['sim'] + EXTRAS['dds'] + EXTRAS['eval']))
EXTRAS['all'] = sorted(set(chain.from_iterable(EXTRAS.values())))
# Test tools, bounded to the releases run (pytest 9.0.3 and 9.2.0, hypothesis 6.155 and 6.170,
# ruff 0.17.6, pytest-timeout 2.4): a new release can break them (pytest 9.2 rejects a nested
# pytest.approx).
TEST = ['pytest>=9,<10', 'pytest-timeout>=2.3,<3', 'hypothesis>=6.150,<7', 'ruff>=0.17,<0.18']
EXTRAS['test'] = sorted(set(EXTRAS['all'] + TEST))

setup(
    name='vit_perception',
    version='0.1.0',
    description='Vision Transformer policy with pose tokens for ROS 2 robot arms',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['vit_perception', 'vit_perception.*']),
    package_data={'vit_perception': ['data/*', 'data/*/*']},
    # Same place as an ament install: <prefix>/share/vit_perception/msg/*.msg
    data_files=[('share/vit_perception/msg', glob('msg/*.msg'))],
    install_requires=[
        TORCH, TRANSFORMERS, 'safetensors>=0.4', 'numpy>=1.24', 'opencv-python-headless>=4.8',
        'pyyaml>=6',
    ],
    extras_require=EXTRAS,
    entry_points={'console_scripts': ['vit-perception=vit_perception.tools.cli:main']},
)
