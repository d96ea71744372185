#!/bin/sh
# Headless OpenGL for the MuJoCo simulator (vit_perception/tools/sim): Mesa's EGL (the default,
# MUJOCO_GL=egl, software llvmpipe, no GPU or X server needed) and OSMesa (the fallback,
# MUJOCO_GL=osmesa). The CI image already has the EGL packages; this makes a fresh or slim
# Debian bookworm / Ubuntu 22.04+ machine render too. Run as root (or with sudo).
set -eu
SUDO=''
if [ "$(id -u)" != 0 ]; then SUDO='sudo'; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends libegl1 libegl-mesa0 libgl1-mesa-dri \
    libosmesa6
