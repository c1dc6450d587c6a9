# Sourced by scripts/test and scripts/scalewise: makes sure a Vulkan driver and loader exist (installing
# Mesa's software Vulkan, lavapipe, on a machine without one; in CI also Mesa's GL for the wgpu_gl
# tests) and sets the environment wgpu wants.
# Expects `set -euo pipefail` in the caller.

# Vulkan is usable when an ICD manifest and the loader (libvulkan.so.1) are both present. An ICD named
# explicitly through VK_DRIVER_FILES / VK_ICD_FILENAMES (e.g. the NVIDIA one) counts as present.
have_vulkan() {
    if [[ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]]; then
        compgen -G '/usr/share/vulkan/icd.d/*.json' >/dev/null || return 1
    fi
    # ldconfig lives in /sbin, which is not on every user's PATH. The output is captured first, not
    # piped into `grep -q`: under pipefail an early-exiting grep can fail the pipeline with SIGPIPE.
    local ldconfig cache
    ldconfig="$(command -v ldconfig || echo /sbin/ldconfig)"
    cache="$("$ldconfig" -p 2>/dev/null || true)"
    [[ "$cache" == *libvulkan.so.1* ]]
}

# RADV, Mesa's AMD driver (same package as lavapipe): `scalewise shader-stats` and its test compile
# the kernels for an AMD GPU on RADV's null device, without the GPU.
have_radv() {
    compgen -G '/usr/share/vulkan/icd.d/radeon_icd*.json' >/dev/null ||
        compgen -G '/usr/local/share/vulkan/icd.d/radeon_icd*.json' >/dev/null ||
        compgen -G '/etc/vulkan/icd.d/radeon_icd*.json' >/dev/null
}

# Installs Debian packages, as root or through sudo, without prompts; `what` names them in messages.
# Usage: apt_install WHAT PACKAGE...
apt_install() {
    local what="$1" sudo
    shift
    if [[ "$(id -u)" -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "setup: error: installing $what needs root or sudo; install them by hand (apt-get install $*)" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: error: no apt-get; install $what with this system's package manager" >&2
        exit 1
    fi
    "${sudo[@]}" apt-get update
    # `env` so that DEBIAN_FRONTEND survives sudo's environment reset: no prompts without stdin.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# Only Linux needs this: macOS runs Metal and Windows DX12/Vulkan through their own drivers.
# CI machines have no GPU: there the tests run on Mesa's software Vulkan driver (lavapipe), and CI
# also needs RADV (the shader-stats test fails there without it).
if [[ "$(uname -s)" == Linux ]] && { ! have_vulkan || { [[ "${CI:-}" == true ]] && ! have_radv; }; }; then
    echo "vulkan setup: no Vulkan driver/loader (or, in CI, no RADV) found; installing Mesa's Vulkan drivers" >&2
    apt_install "Mesa's Vulkan drivers (lavapipe) and the Vulkan loader" mesa-vulkan-drivers libvulkan1
    if ! have_vulkan || ! have_radv; then
        echo "vulkan setup: error: Vulkan (or RADV) still not found after installing mesa-vulkan-drivers" >&2
        exit 1
    fi
fi

# OpenGL through EGL (the GLVND loader, Mesa's EGL and its llvmpipe driver): the op and model tests'
# `wgpu_gl` configuration runs every kernel on wgpu's GL backend, what machines without Vulkan, Metal or
# DX12 get. Outside CI a missing GL is only a SKIP line per test; CI installs it and requires it.
have_gl() {
    local ldconfig cache
    ldconfig="$(command -v ldconfig || echo /sbin/ldconfig)"
    cache="$("$ldconfig" -p 2>/dev/null || true)"
    [[ "$cache" == *libEGL.so.1* && "$cache" == *libEGL_mesa.so.0* ]] &&
        compgen -G '/usr/lib/*/dri/swrast_dri.so' >/dev/null
}
if [[ "$(uname -s)" == Linux && "${CI:-}" == true ]]; then
    if ! have_gl; then
        echo "gl setup: no EGL/Mesa GL found; installing Mesa's GL drivers (llvmpipe) for the wgpu_gl tests" >&2
        apt_install "Mesa's EGL and GL drivers" libegl1 libegl-mesa0 libgl1-mesa-dri
        if ! have_gl; then
            echo "gl setup: error: EGL or Mesa's GL driver still not found after installing them" >&2
            exit 1
        fi
    fi
    export SCALEWISE_TEST_GL="${SCALEWISE_TEST_GL:-require}"
fi

# Without a GPU wgpu also finds GL llvmpipe (no f16, no subgroups, 16 storage buffers per stage);
# lavapipe's Vulkan is the adapter the tests are written for. A caller's choice wins.
if [[ "$(uname -s)" == Linux ]]; then
    export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
fi

# The Vulkan loader warns "XDG_RUNTIME_DIR is invalid" when it is unset (root in CI, containers).
if [[ -z "${XDG_RUNTIME_DIR:-}" ]]; then
    XDG_RUNTIME_DIR="$(mktemp -d)" # mktemp -d makes it 0700, as the spec wants
    export XDG_RUNTIME_DIR
    trap 'rm -rf -- "$XDG_RUNTIME_DIR"' EXIT
fi
