#!/usr/bin/env bash
# Fetch BSDS500 (train/ = its train+test splits, val/ = its val split) and the 24 Kodak images
# (kodak/) into DATA, the layout docs/data.md describes. For machines with internet access;
# nothing in the tests or CI calls it.
#   scripts/fetch_data.sh DATA
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 DATA   (a folder; train/, val/ and kodak/ are created inside)" >&2
  exit 2
fi
DATA=$1
BSDS_URL=http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz
KODAK_URL=http://r0k.us/graphics/kodak/kodak

mkdir -p "$DATA/train" "$DATA/val" "$DATA/kodak"

if [ -z "$(ls -A "$DATA/val")" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "BSDS500: $BSDS_URL"
  curl -fL --retry 3 -o "$tmp/bsds500.tgz" "$BSDS_URL"
  tar -xzf "$tmp/bsds500.tgz" -C "$tmp" BSR/BSDS500/data/images
  images=$tmp/BSR/BSDS500/data/images
  for split in train test; do
    for f in "$images/$split"/*.jpg; do cp "$f" "$DATA/train/bsds500-$split-$(basename "$f")"; done
  done
  for f in "$images/val"/*.jpg; do cp "$f" "$DATA/val/bsds500-val-$(basename "$f")"; done
fi

for i in $(seq -w 1 24); do
  name=kodim$i.png
  [ -s "$DATA/kodak/$name" ] || curl -fL --retry 3 -o "$DATA/kodak/$name" "$KODAK_URL/$name"
done

echo "train: $(ls "$DATA/train" | wc -l) images, val: $(ls "$DATA/val" | wc -l), kodak: $(ls "$DATA/kodak" | wc -l)"
echo "next: VQ_DATA_ROOT=$DATA vq-train fit --config configs/default.yaml"
