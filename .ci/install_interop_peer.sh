#!/bin/sh
# Install the C peer used by test/drivers/test_dds_interop.py: Debian's Cyclone DDS 0.10.x (the
# same core ROS 2 Humble/Jazzy ship through rmw_cyclonedds), its IDL compiler and a C compiler.
# Run as root (or with sudo) on Debian bookworm / Ubuntu 22.04+.
set -eu
SUDO=''
if [ "$(id -u)" != 0 ]; then SUDO='sudo'; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends cyclonedds-dev cyclonedds-tools gcc libc6-dev
idlc -v 2>/dev/null || true
