#!/usr/bin/env bash
# Copy the demo's models out of a finished `rdd benchmark configs/fmnist/benchmark.yaml` run
# (default runs/fmnist), and the diffusers teacher (default runs/teachers/eps), into assets/fmnist with their checksums.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/fmnist}
DEST=assets/fmnist
mkdir -p "$DEST"
cp "$RUN/chain-pd/stage-4to2/model.pt" "$DEST/two_step.pt"
cp "$RUN/classifier/classifier.pt" "$DEST/classifier.pt"
cp "$RUN/evalnet/evalnet.pt" "$DEST/evalnet.pt"
# Only these three lines change: the other shipped models (base.pt, eight_step.pt) keep theirs; the teachers' below.
(cd "$DEST" && { grep -v -E '  (two_step|classifier|evalnet)\.pt$' SHA256SUMS 2>/dev/null || true
                 sha256sum two_step.pt classifier.pt evalnet.pt; } > SHA256SUMS.new && mv SHA256SUMS.new SHA256SUMS)
cat "$DEST/SHA256SUMS"
du -ch "$DEST"/*.pt | tail -1

# The diffusers teachers: plain diffusers DDPMs from scripts/train_diffusers_teacher.py; their training state
# stays behind. eps_teacher (README "Bring your diffusers model"): epsilon, linear betas, `--out runs/teachers/eps`;
# cosine_eps_teacher: epsilon, improved-DDPM cosine, `--beta-schedule squaredcos_cap_v2 --out runs/teachers/cosine`.
ship_teacher() {  # SOURCE NAME
    rm -rf "${DEST:?}/$2"
    mkdir -p "$DEST/$2"
    cp -r "$1/model_index.json" "$1/unet" "$1/scheduler" "$DEST/$2/"
    (cd "$DEST" && { grep -v "  $2/" SHA256SUMS || true
                     sha256sum "$2/model_index.json" "$2/unet/config.json" \
                         "$2/unet/diffusion_pytorch_model.safetensors" "$2/scheduler/scheduler_config.json"; } > SHA256SUMS.new \
                 && mv SHA256SUMS.new SHA256SUMS)
    du -sh "$DEST/$2"
}
ship_teacher "${2:-runs/teachers/eps}" eps_teacher
ship_teacher "${3:-runs/teachers/cosine}" cosine_eps_teacher
