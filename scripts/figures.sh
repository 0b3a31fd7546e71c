#!/usr/bin/env bash
# Redraw the README's figures in docs/ with exactly the commands the README shows (which write into
# results/ instead, so that trying them never changes a tracked file). Run from the repository root
# in the project's venv: bash scripts/figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for a in "sigmoid default" "tanh xavier_normal" "relu kaiming_normal"; do set -- $a
  vgp run configs/quickstart.yaml -q --force --out results/act name=$1 model.activation=$1 model.init=$2 train.steps=100
done
vgp plot results/act --kind profile -o docs/gradient_profile.png
vgp sweep configs/sweeps/decay_vs_depth.yaml -q
vgp plot results/decay-vs-depth --kind summary --x depth --y decay_per_layer --hue activation -o docs/decay_vs_depth.png
