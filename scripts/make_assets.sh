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
# Only these three lines change: the other shipped models (base.pt, eight_step.pt, eps_teacher/) keep theirs.
(cd "$DEST" && { grep -v -E '  (two_step|classifier|evalnet)\.pt$' SHA256SUMS 2>/dev/null || true
                 sha256sum two_step.pt classifier.pt evalnet.pt; } > SHA256SUMS.new && mv SHA256SUMS.new SHA256SUMS)
cat "$DEST/SHA256SUMS"
du -ch "$DEST"/*.pt | tail -1

# The diffusers teacher of README "Bring your diffusers model": a plain diffusers DDPM (epsilon, linear
# betas) from `python scripts/train_diffusers_teacher.py --out runs/teachers/eps`; its training state stays behind.
TEACHER=${2:-runs/teachers/eps}
rm -rf "$DEST/eps_teacher"
mkdir -p "$DEST/eps_teacher"
cp -r "$TEACHER/model_index.json" "$TEACHER/unet" "$TEACHER/scheduler" "$DEST/eps_teacher/"
(cd "$DEST" && sha256sum eps_teacher/model_index.json eps_teacher/unet/config.json \
    eps_teacher/unet/diffusion_pytorch_model.safetensors eps_teacher/scheduler/scheduler_config.json >> SHA256SUMS)
du -sh "$DEST/eps_teacher"
