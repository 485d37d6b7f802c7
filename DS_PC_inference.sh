#!/usr/bin/env bash
# Deep Sink + Participative Compression (sink 10, Budget 16, Recent 4: the default Deep Forcing mode) over the
# MovieGenVideoBench prompts, in ONE process (models loaded once).
# Weights: the EMA generator (generator_ema of checkpoints/self_forcing_dmd.pt, --use_ema), as the released script.
# Outputs: output/DS_PC/line_XXXX/<prompt>-0.mp4 (+ .json sidecar). Rerun to resume; finished videos are skipped.
# Extra arguments are passed through to inference.py (later flags win), e.g.
#   bash DS_PC_inference.sh --num_output_frames 240 model_kwargs.sink_size=12
#   NPROC=8 bash DS_PC_inference.sh       # one process per GPU with torchrun, prompts sharded across them
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
DATA="$ROOT/prompts/MovieGenVideoBench_txt"
if [ ! -d "$DATA" ]; then
  echo "DS_PC_inference.sh: $DATA not found, using the example prompts (see README: MovieGenVideoBench)." >&2
  DATA="$ROOT/prompts/examples_txt"
fi
ARGS=(--config_path "$ROOT/configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml" --is_ds_only 0 --Budget 16 --Recent 4
      --data_path "$DATA" --output_folder output/DS_PC --use_ema "$@")
if [ "${NPROC:-1}" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" "$ROOT/inference.py" "${ARGS[@]}"
fi
exec "$PYTHON" "$ROOT/inference.py" "${ARGS[@]}"
