# Sourced by scripts/test: a newer RADV for the shader-stats test's cooperative-matrix part. Debian 12's
# Mesa (22.3) has no VK_KHR_cooperative_matrix, so its RADV cannot compile the native flavours of the
# matrix-unit kernels; bookworm-backports' Mesa (25) lists it for RDNA3. Its Vulkan driver is unpacked
# into .deps/radv-coop (ignored by git; nothing is installed system-wide) and SCALEWISE_RADV_COOP_ICD
# names its manifest. It needs the libraries of Debian 12's own mesa-vulkan-drivers (scripts/lib/
# vulkan.sh installs them in CI). Expects `set -euo pipefail` in the caller and the repository root as
# the working directory.

RADV_COOP_DIR=".deps/radv-coop"

# Downloads and unpacks the driver; fails (leaving nothing behind) where the archive or a library it
# links is missing.
radv_coop_fetch() {
    local work
    work="$(mktemp -d)" || return 1
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/root" || return 1
    echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$work/sources.list"
    local apt=(apt-get -qq -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/none"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
    # apt hands downloads to its _apt user where it can; the private folders are root's, so say so.
    [[ "$(id -u)" -eq 0 ]] && apt+=(-o "APT::Sandbox::User=root")
    local ok=false
    if "${apt[@]}" update 2>/dev/null && (cd "$work" && "${apt[@]}" download mesa-vulkan-drivers/bookworm-backports 2>/dev/null) &&
        dpkg-deb -x "$work"/mesa-vulkan-drivers_*.deb "$work/root"; then
        local lib="$work/root/usr/lib/x86_64-linux-gnu/libvulkan_radeon.so"
        # radeon_icd.x86_64.json in Mesa 22, radeon_icd.json in Mesa 25.
        local manifest
        manifest="$(compgen -G "$work/root/usr/share/vulkan/icd.d/radeon_icd*.json" | head -1 || true)"
        local missing
        missing="$(ldd "$lib" 2>/dev/null | grep 'not found' || true)"
        if [[ -e "$lib" && -n "$manifest" && -z "$missing" ]]; then
            mkdir -p "$RADV_COOP_DIR"
            cp "$lib" "$RADV_COOP_DIR/libvulkan_radeon.so"
            # The manifest as packaged, pointing at the unpacked library.
            sed "s#\"library_path\": *\"[^\"]*\"#\"library_path\": \"$(pwd)/$RADV_COOP_DIR/libvulkan_radeon.so\"#" \
                "$manifest" >"$RADV_COOP_DIR/radeon_icd.json"
            ok=true
        elif [[ -n "$missing" ]]; then
            echo "scripts/test: the backports RADV needs libraries this system lacks: $missing" >&2
        fi
    fi
    rm -rf "$work"
    $ok
}

if [[ -z "${SCALEWISE_RADV_COOP_ICD:-}" && "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]] &&
    command -v apt-get >/dev/null 2>&1 && grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; then
    if [[ ! -e "$RADV_COOP_DIR/radeon_icd.json" ]]; then
        echo "scripts/test: unpacking Mesa 25's RADV from bookworm-backports into $RADV_COOP_DIR (about 11 MB, once)" >&2
        radv_coop_fetch ||
            echo "scripts/test: could not fetch it; the shader-stats test's cooperative-matrix part will SKIP" \
                "(and fail under CI=true)" >&2
    fi
    if [[ -e "$RADV_COOP_DIR/radeon_icd.json" ]]; then
        SCALEWISE_RADV_COOP_ICD="$(pwd)/$RADV_COOP_DIR/radeon_icd.json"
        export SCALEWISE_RADV_COOP_ICD
    fi
fi
