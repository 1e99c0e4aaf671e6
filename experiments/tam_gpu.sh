#!/usr/bin/env bash
# Train the nine TAM models (3 architectures x 3 strategies) side by side on one GPU machine, as
# for the table in the README, and pack the trained models (fp16) and their logs for scoring:
#   experiments/tam_gpu.sh NATIVE_DATA OUT [SECONDS]
# NATIVE_DATA: a synthetic TAM dataset written with upscale 1 (write_synthetic_tam(..., upscale=1)),
# upscaled here exactly as `pathseg experiment tam` writes it. Score afterwards with
#   pathseg experiment tam --data DATA --out OUT <same options>   (finished runs are only scored)
set -euo pipefail
src=$1; out=$2; limit=${3:-480}
mkdir -p "$out"
python3 -c "from pathseg.train.tam_data import upscale_dataset; upscale_dataset('$src', '$out/data')"
common=(--data "$out/data" --steps 20000 --batch-size 8 --lr 1e-3 --val-every 200 --threads 1 --workers 2
        --time-limit "$limit" --device cuda)
for a in unet segnet deeplabv3; do
  for s in baseline weights instance; do
    python3 -m pathseg train tam "${common[@]}" --arch "$a" --strategy "$s" --out "$out/runs/$a-$s" \
      > "$out/$a-$s.log" 2>&1 &
  done
done
wait
# fp16 copies of the final models (half the size) with their training logs, one archive per architecture.
python3 - "$out" <<'PY'
import sys, shutil
from pathlib import Path
from pathseg.models import load_model, save_model
out = Path(sys.argv[1])
for run in sorted((out / "runs").iterdir()):
    lm = load_model(run / "model")
    dst = out / "pack" / run.name
    save_model(dst / "model", lm.net, lm.config, half=True)
    for f in ("log.jsonl", "train_config.json", "split.json"):
        shutil.copy(run / f, dst / f)
PY
