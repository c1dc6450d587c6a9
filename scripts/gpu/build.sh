#!/usr/bin/env bash
# Prepares the GPU run on this machine (the device machine has no cargo): builds the CLI and the test
# executables with the CUDA backend, copies them stripped into .devbin/, and downloads the Vulkan
# loader's .deb into .gl/ (the device image has NVIDIA's ICD but no loader). Both folders are
# git-ignored. Then, with a device lent: run scripts/gpu/run.sh there, carrying [".gl", ".devbin"].
#
# What travels to the device is at most 64 MiB: the tracked files (about 35 MB, 27 of them the demo
# weights in assets/) and the carried folders. So the executables are built without the embedded
# demo models (the `demo` feature; the benchmarks use random weights and the model tests read their
# fixtures from the tree), stripped of symbols and gzipped (31 MB -> 12), and the total is checked
# here.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.."

cargo build --release -p scalewise-cli --no-default-features --features cuda
mkdir -p .devbin
rm -f .devbin/scalewise* .devbin/test-*
cp target/release/scalewise .devbin/scalewise
# The op and model tests and the NVRTC check, each as one executable (cargo prints their paths).
cargo test --release -p scalewise --no-default-features --features cuda --test ops --test models --test cuda \
    --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        shutil.copy(msg["executable"], ".devbin/test-" + msg["target"]["name"])
        print("copied", msg["target"]["name"])
'
strip .devbin/scalewise .devbin/test-*
# Compressed to a third (run.sh unpacks them there).
gzip -9 -f .devbin/scalewise .devbin/test-*
# The tests find their fixtures under the folder they were built in (CARGO_MANIFEST_DIR); run.sh
# links it to the tree's copy on the device.
pwd >.devbin/built-in

mkdir -p .gl /tmp/amd64/partial
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
if ! compgen -G '.gl/libvulkan1_*.deb' >/dev/null; then
    apt-get "${o[@]}" update -qq && (cd .gl && apt-get "${o[@]}" download libvulkan1)
fi
du -sh .devbin .gl
tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')
carried=$(find .devbin .gl -type f -print0 | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
total=$((tracked + untracked + carried))
echo "travels: $((total / 1048576)) MiB (tracked $((tracked / 1048576)), untracked $((untracked / 1048576)), .devbin and .gl $((carried / 1048576))) of 64"
if ((total > 64 * 1048576)); then
    echo "build.sh: over the device's 64 MiB: the run would be refused" >&2
    exit 1
fi
