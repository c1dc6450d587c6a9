# Sourced by scripts/test: makes NVRTC available for the CUDA backend's GPU-less tests (compiling
# every kernel to sm_80/sm_90 cubin) by installing NVIDIA's PyPI wheel into .deps/nvrtc (ignored by
# git, never committed), and points SCALEWISE_NVRTC_DIR at it. No GPU or driver is needed.
# Expects `set -euo pipefail` in the caller and the repository root as the working directory.

NVRTC_WHEEL="nvidia-cuda-nvrtc==13.0.88"
NVRTC_TARGET=".deps/nvrtc"
NVRTC_LIB="$NVRTC_TARGET/nvidia/cu13/lib"

if [[ -z "${SCALEWISE_NVRTC_DIR:-}" && "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]]; then
    if [[ ! -e "$NVRTC_LIB/libnvrtc.so.13" ]]; then
        echo "scripts/test: installing $NVRTC_WHEEL into $NVRTC_TARGET (about 90 MB, once)" >&2
        python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$NVRTC_TARGET" "$NVRTC_WHEEL" ||
            echo "scripts/test: could not install $NVRTC_WHEEL; the NVRTC compile test will SKIP (and fail under CI=true)" >&2
    fi
    if [[ -e "$NVRTC_LIB/libnvrtc.so.13" ]]; then
        SCALEWISE_NVRTC_DIR="$(pwd)/$NVRTC_LIB"
        export SCALEWISE_NVRTC_DIR
    fi
fi
