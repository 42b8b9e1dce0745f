#!/usr/bin/env bash
# Install the detection extra (mmengine, mmcv with compiled ops, mmdet) into the active venv.
#
# mmcv 2.1.0 (mmdet 3.x wants mmcv>=2.0.0rc4,<2.2.0) has no wheel for torch 2.13 on PyPI, so it is
# built from source once, in a separate build venv (its setup.py needs setuptools<70 for
# pkg_resources; torch wants a newer one), and the wheel is cached OUTSIDE the repository in
# $PTQBENCH_WHEEL_CACHE (default ~/.cache/ptqbench/wheels). Later runs reuse it: seconds, not minutes.
# First build: measured 2439 s (41 min) on 2 CPU cores shared with other jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
MMCV_VERSION=2.1.0
cache="${PTQBENCH_WHEEL_CACHE:-$HOME/.cache/ptqbench/wheels}"
mkdir -p "$cache"
torch_version=$(python -c "import torch; print(torch.__version__.split('+')[0])")
# FORCE_CUDA=1 builds the CUDA ops too (needs nvcc); that wheel is cached under its own tag, since
# a CPU-only mmcv cannot run RoIAlign/NMS on GPU tensors.
tag="torch${torch_version}"
if [ "${FORCE_CUDA:-0}" = 1 ]; then tag="$tag-cuda"; fi
wheel=$(ls "$cache"/$tag/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
    echo "building mmcv $MMCV_VERSION from source against torch $torch_version (measured 41 min on 2 busy cores)"
    start=$(date +%s)
    build_env="$cache/build-venv-$tag"
    python -m venv "$build_env"
    "$build_env/bin/pip" install -q -c constraints.txt "torch===$torch_version" wheel ninja packaging \
        numpy addict pyyaml yapf opencv-python-headless
    # mmcv's setup.py imports pkg_resources; the build was measured with setuptools 69.5 (<70). torch's
    # metadata asks for setuptools>=77.0.3, so pip would end this step with a resolver "ERROR: ... torch
    # requires setuptools>=77.0.3" that is no failure: this venv only builds the wheel and is deleted.
    # --no-warn-conflicts leaves that message out.
    "$build_env/bin/pip" install -q --no-warn-conflicts "setuptools<70"
    tmp=$(mktemp -d "$cache/$tag.tmp.XXXXXX")   # private: two concurrent builds do not mix files
    MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$build_env/bin/pip" wheel --no-build-isolation --no-deps -w "$tmp" "mmcv==$MMCV_VERSION"
    mkdir -p "$cache/$tag"
    mv "$tmp"/mmcv-*.whl "$cache/$tag/"   # the move makes a half-built wheel impossible to reuse
    rm -rf "$tmp" "$build_env"
    echo "mmcv build took $(( $(date +%s) - start )) s; wheel cached in $cache/$tag"
    wheel=$(ls "$cache"/$tag/mmcv-$MMCV_VERSION-*.whl | head -n1)
fi
# OpenCV without its GUI libraries (the GUI opencv-python needs libGL, absent on most servers).
# mmcv's wheel built above asks for no OpenCV (its build venv had the headless one), but mmengine's
# PyPI wheel requires opencv-python. Its sdist does not (it ships without the requirement files, and
# adds opencv-python only when no cv2 is importable), so mmengine is built from the sdist after
# opencv-python-headless, and its runtime dependencies (those its wheel lists) are installed here.
pip install -c constraints.txt opencv-python-headless addict matplotlib numpy pyyaml rich termcolor yapf \
    "setuptools<81" wheel
pip install -c constraints.txt --no-deps --no-build-isolation --no-binary mmengine mmengine
pip install -c constraints.txt "$wheel" -e ".[det]"
python -c "import mmcv, mmdet, mmengine; from mmcv.ops import RoIAlign, nms; print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmengine', mmengine.__version__)"
