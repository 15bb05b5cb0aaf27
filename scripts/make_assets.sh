#!/usr/bin/env bash
# Copy the demo's models out of a finished `rdd benchmark configs/fmnist/benchmark.yaml` run
# (default runs/fmnist) into assets/fmnist, with their checksums.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/fmnist}
DEST=assets/fmnist
mkdir -p "$DEST"
cp "$RUN/chain-pd/stage-4to2/model.pt" "$DEST/two_step.pt"
cp "$RUN/classifier/classifier.pt" "$DEST/classifier.pt"
cp "$RUN/evalnet/evalnet.pt" "$DEST/evalnet.pt"
(cd "$DEST" && sha256sum two_step.pt classifier.pt evalnet.pt > SHA256SUMS)
cat "$DEST/SHA256SUMS"
du -ch "$DEST"/*.pt | tail -1
