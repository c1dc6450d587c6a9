# Sourced by scripts/test and scripts/scalewise: makes sure a Vulkan driver and loader exist (installing
# Mesa's software Vulkan, lavapipe, on a machine without one) and sets the environment wgpu wants.
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

# Only Linux needs this: macOS runs Metal and Windows DX12/Vulkan through their own drivers.
# CI machines have no GPU: there the tests run on Mesa's software Vulkan driver (lavapipe), and CI
# also needs RADV (the shader-stats test fails there without it).
if [[ "$(uname -s)" == Linux ]] && { ! have_vulkan || { [[ "${CI:-}" == true ]] && ! have_radv; }; }; then
    echo "vulkan setup: no Vulkan driver/loader (or, in CI, no RADV) found; installing Mesa's Vulkan drivers" >&2
    if [[ "$(id -u)" -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "vulkan setup: error: installing mesa-vulkan-drivers and libvulkan1 needs root or sudo;" \
            "install them by hand (apt-get install mesa-vulkan-drivers libvulkan1)" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "vulkan setup: error: no apt-get; install Mesa's Vulkan drivers (lavapipe) and the" \
            "Vulkan loader with this system's package manager" >&2
        exit 1
    fi
    "${sudo[@]}" apt-get update
    # `env` so that DEBIAN_FRONTEND survives sudo's environment reset: no prompts without stdin.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y mesa-vulkan-drivers libvulkan1
    if ! have_vulkan || ! have_radv; then
        echo "vulkan setup: error: Vulkan (or RADV) still not found after installing mesa-vulkan-drivers" >&2
        exit 1
    fi
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
