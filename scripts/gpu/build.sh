#!/usr/bin/env bash
# Prepares the GPU run on this machine (the device machine has no cargo): builds the CLI and the test
# executables with the CUDA backend, copies them into .devbin/, and downloads the Vulkan loader's
# .deb into .gl/ (the device image has NVIDIA's ICD but no loader). Both folders are git-ignored.
# Then, with a device lent: run scripts/gpu/run.sh there, carrying [".gl", ".devbin"].
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.."

cargo build --release -p scalewise-cli --features cuda
# The op and model tests and the NVRTC check, each as one executable (cargo prints their paths).
mkdir -p .devbin
cp target/release/scalewise .devbin/scalewise
cargo test --release -p scalewise --features cuda --test ops --test models --test cuda --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        shutil.copy(msg["executable"], ".devbin/test-" + msg["target"]["name"])
        print("copied", msg["target"]["name"])
'
cp scripts/gpu/run.sh scripts/gpu/torch_peers.py .devbin/

mkdir -p .gl /tmp/amd64/partial
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
if ! compgen -G '.gl/libvulkan1_*.deb' >/dev/null; then
    apt-get "${o[@]}" update -qq && (cd .gl && apt-get "${o[@]}" download libvulkan1)
fi
du -sh .devbin .gl
