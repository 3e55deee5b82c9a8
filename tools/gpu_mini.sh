#!/usr/bin/env bash
# Build, train and score a `mini` in one go, on one GPU (or, with SMOKE=1, the same path on a CPU in minutes):
# synthetic training videos through the real stages (synth, annotate and segment with the oracle backends,
# build-sessions), a timed `vincie train recipes/mini.yaml`, then the scores docs/mini.md reports: first
# turns of a tuning set disjoint from the held-out benchmark (success and "edit right" by kind) and the
# held-out sessions with and without context. Everything lands in OUT; each stage prints one line.
#
#   tools/gpu_mini.sh OUT                    # one CUDA device, defaults below
#   INIT=vincie_cli/assets/mini TRAIN_S=300 tools/gpu_mini.sh OUT   # continue from the packaged model
#   SMOKE=1 tools/gpu_mini.sh /tmp/gm        # the whole path on a CPU: 16 videos, 3 steps, 4 + 2 sessions
#
# Environment: VIDEOS (6000 training videos), TRAIN_S (training seconds, 420), STEPS (step cap, 20000), TOKENS
# (tokens per batch, 49152), LR (1e-3), INIT (a model folder to start from; default: from scratch), SETS (more
# "--set k=v" words for vincie train), TUNE (tuning first turns, 300), BENCH (held-out sessions, 50), JOBS
# (parallel processes, nproc), VINCIE (the command, default vincie), GRID (sampling steps: train only at the
# timesteps of that many steps' grid and score with as many steps, as the packaged model's last stage did, 1;
# 0 trains on the recipe's shifted timesteps and scores with 2 steps). Re-running with the same OUT reuses
# each finished stage (the data stages resume; training continues from OUT/run/latest).
set -euo pipefail
OUT=${1:?usage: tools/gpu_mini.sh OUT}
V=${VINCIE:-vincie}
JOBS=${JOBS:-$(nproc)}
export HF_HUB_OFFLINE=1
if [[ -n ${SMOKE:-} ]]; then
    VIDEOS=${VIDEOS:-16} TRAIN_S=${TRAIN_S:-120} STEPS=${STEPS:-3} TOKENS=${TOKENS:-6144} TUNE=${TUNE:-4} BENCH=${BENCH:-2}
    TURNS=2 DEVICE=cpu
fi
VIDEOS=${VIDEOS:-6000} TRAIN_S=${TRAIN_S:-420} STEPS=${STEPS:-20000} TOKENS=${TOKENS:-49152} LR=${LR:-1e-3}
TUNE=${TUNE:-300} BENCH=${BENCH:-50} TURNS=${TURNS:-5} DEVICE=${DEVICE:-auto} GRID=${GRID:-1}
mkdir -p "$OUT"
say() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }
t0=$SECONDS

say "synth: $VIDEOS videos, 64x64, $JOBS workers"
$V synth "$OUT/synth" --videos "$VIDEOS" --size 64x64 --duration 6 --workers "$JOBS" > "$OUT/synth.jsonl" 2> "$OUT/synth.log"
say "annotate (oracle)"
$V annotate "$OUT/synth/*.mp4" --out-dir "$OUT/ann" --backend oracle --cuts none --no-skip-frozen \
    --sampling interval --interval 1 --workers "$JOBS" > "$OUT/annotate.jsonl" 2> "$OUT/annotate.log"
say "segment (oracle), $JOBS shards"
for i in $(seq 0 $((JOBS - 1))); do
    $V segment "$OUT/ann" --out-dir "$OUT/seg" --backend oracle --shard "$i/$JOBS" > "$OUT/segment-$i.jsonl" 2>&1 &
done
wait
say "build-sessions"
[[ -f $OUT/sessions/index.json ]] || $V build-sessions "$OUT/seg" --out-dir "$OUT/sessions" --image-format png \
    --val-fraction 0.02 > "$OUT/sessions.jsonl" 2> "$OUT/sessions.log"
say "data ready after $((SECONDS - t0)) s: $(tr -d '\n ' < "$OUT/sessions/stats.json" | cut -c1-200)"

TRAIN=(--set "data.sources=[$OUT/sessions]" --set train.precision=bf16 --set "train.tokens_per_batch=$TOKENS"
    --set "train.max_time=$TRAIN_S" --set "train.max_steps=$STEPS" --set "optim.lr=$LR" --set optim.warmup_steps=200
    --set train.checkpoint_every=1000000 --set eval.every=0 --set log.every=50 --set data.num_workers=4
    --set tasks.loss_weights.csp=0.3 --set tasks.loss_weights.nsp=0.3)
SAMPLE_STEPS=2
if [[ $GRID -gt 0 ]]; then
    TRAIN+=(--set flow.timestep_dist=grid --set "flow.timestep_grid_steps=$GRID")
    SAMPLE_STEPS=$GRID
fi
[[ -n ${INIT:-} ]] && TRAIN+=(--set "model.init=$INIT")
[[ -n ${SMOKE:-} ]] && TRAIN+=(--set optim.warmup_steps=1 --set log.every=1)
RESUME=()
[[ -f $OUT/run/latest ]] && RESUME=(--resume)
say "train mini: ${TRAIN_S} s or $STEPS steps, $TOKENS tokens per batch, lr $LR, grid $GRID${INIT:+, from $INIT}"
# shellcheck disable=SC2086
$V train recipes/mini.yaml --out-dir "$OUT/run" "${RESUME[@]}" "${TRAIN[@]}" ${SETS:-} > "$OUT/train.jsonl" 2> "$OUT/train.log"
CK="$OUT/run/$(cat "$OUT/run/latest")"
say "trained: $(grep '"event": *"done"' "$OUT/train.jsonl" | tail -n 1 | cut -c1-300)"

G=(--model "$CK" --device "$DEVICE" --gen-set "steps=$SAMPLE_STEPS" --gen-set shift=3.0 --gen-set guidance=1.0)
mkdir -p "$OUT/eval"
say "eval: $TUNE tuning first turns (seed offset 500)"
$V eval synthetic -o "$OUT/eval/tune" --sessions "$TUNE" --size 64 --turns 1 --seed-offset 500 "${G[@]}" \
    > "$OUT/eval/tune.log" 2>&1
say "eval: $BENCH held-out sessions x $TURNS turns, with and without context"
$V eval synthetic -o "$OUT/eval/ctx" --sessions "$BENCH" --size 64 --turns "$TURNS" "${G[@]}" > "$OUT/eval/ctx.log" 2>&1
$V eval synthetic -o "$OUT/eval/noctx" --benchmark "$OUT/eval/ctx/benchmark" --no-context "${G[@]}" \
    > "$OUT/eval/noctx.log" 2>&1
for r in tune ctx noctx; do
    echo "== $r ($OUT/eval/$r/report.md)"
    sed -n '/^| metric/,/^$/p;/^| edit kind/,/^$/p' "$OUT/eval/$r/report.md"
done
say "done in $((SECONDS - t0)) s; checkpoint $CK"
