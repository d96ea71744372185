"""pip install for the ROS-free parts (core, DDS/bag drivers, tools).

ROS 2 users build with colcon instead (ament_cmake: CMakeLists.txt + package.xml).
"""

from glob import glob

from setuptools import find_packages, setup

TORCH = 'torch>=2.4,<2.14'  # tested: 2.13.0 (CPU, CI), 2.11 (CUDA)
TRANSFORMERS = 'transformers>=5.0,<6'  # tested: 5.23 (5.x moved ViTModel.encoder.layer to .layers)

DDS = ['cyclonedds==11.0.1', 'rosbags>=0.10,<0.12']
EVAL = ['rosbags>=0.10,<0.12', 'matplotlib>=3.7', 'tqdm>=4.60']
SIM = ['mujoco>=3.1,<5']
LEROBOT = ['pyarrow>=21,<27', 'av>=14,<19']  # tested: pyarrow 26.0.1, av 18.1.0 (LeRobot v3.0 I/O)
# tested: openvino 2026.4.1, onnxruntime 1.32.0, onnx 1.23.2, onnxscript 0.7.2 (torch's exporter)
RUNTIMES = ['openvino>=2026.4,<2027', 'onnxruntime>=1.32,<1.33', 'onnx>=1.23,<1.24',
            'onnxscript>=0.7,<0.8']
TEST = ['pytest>=8', 'pytest-timeout>=2.2', 'hypothesis>=6.100', 'ruff>=0.5', 'pillow>=10',
        'psutil>=5.9']

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
    extras_require={
        'dds': DDS,
        'eval': EVAL,
        'sim': SIM,
        'lerobot': LEROBOT,
        'runtimes': RUNTIMES,
        'test': sorted(set(DDS + EVAL + SIM + LEROBOT + RUNTIMES + TEST)),
    },
    entry_points={'console_scripts': ['vit-perception=vit_perception.tools.cli:main']},
)
