#!/usr/bin/env bash
# On a GPU machine (torch only, no Spark): train-step throughput of the product model, then a sweep
# of training settings run side by side on one GPU, each variant in its own process.
#   scripts/bench_gpu_sweep.sh DIR_WITH_NPZ OUT_DIR [SECONDS_PER_VARIANT [VARIANTS_FILE]]
# VARIANTS_FILE: lines "label dataset patience spec" (spec as bench_gpu --variant); then no throughput step.
# DIR_WITH_NPZ holds ml-1m.npz and Beauty.npz made here by
#   python -m benchmarks.gpu export WORK X.npz --set features.holdout_users=0 --set features.holdout_items=0
# from a lakehouse that scripts/bench_quality.sh ... --work WORK built (the benchmark's split).
# Training mirrors the CPU benchmark's 2 Horovod ranks x batch 128 at lr 0.002 x sqrt(2): one
# process, batch 256, lr 0.00283. --cpu-epochs 27 also tests the best of the first 27 epochs, the
# number the 30-minute CPU budget trains on ml-1m.
set -uo pipefail
src=$(realpath "$1"); out=$(realpath -m "$2"); secs=${3:-300}; variants=${4:+$(realpath "$4")}
cd "$(dirname "$0")/.."  # benchmarks/ is imported from the repository root
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
[ -z "$variants" ] && $py -m benchmarks.gpu throughput "$src/ml-1m.npz" --out "$out/throughput.json" \
  --variant all --variant "id_only:use_profile=false,use_content=false,use_text=false,item_id_dropout=0" \
  --variant "all_neg1000:loss_negatives=1000" > "$tmp/throughput.log" 2>&1
common=(--skip-kernel --variants "" --batch-size 256 --lr 0.00283 --seconds "$secs" --max-epochs 400)
run() {  # label dataset patience spec
  timeout $((secs + 90)) $py -m benchmarks.gpu run "$src/$2.npz" --out "$tmp/$1.json" "${common[@]}" \
    --patience "$3" --cpu-epochs 27 --variant "$4" > "$tmp/$1.log" 2>&1 &
}
if [ -n "$variants" ]; then  # a file of "label dataset patience spec" lines instead of the list below
  while read -r l ds pat spec; do [ -n "$l" ] && run "$l" "$ds" "$pat" "$spec"; done < "$variants"
else
  run ml_base ml-1m 20 "base:"
  run ml_lr2x ml-1m 20 "lr2x:lr=0.00566"
  run ml_drop01 ml-1m 20 "drop01:dropout=0.1"
  run ml_d128 ml-1m 20 "d128:d_model=128"
  run ml_neg1000 ml-1m 20 "neg1000:loss_negatives=1000"
  run ml_b128 ml-1m 20 "b128:batch_size=128"
  run be_base Beauty 10 "base:"
  run be_drop05 Beauty 10 "drop05:dropout=0.5"
  run be_neg1000 Beauty 10 "neg1000:loss_negatives=1000"
fi
wait
$py - "$tmp" "$out/sweep.json" <<'PY'
import glob, json, os, sys
tmp, dst = sys.argv[1:3]
res = {}
for f in sorted(glob.glob(os.path.join(tmp, "*.json"))):
    res[os.path.basename(f)[:-5]] = json.load(open(f))
json.dump(res, open(dst, "w"), indent=1)
for k, r in res.items():
    for v in r.get("variants", []):
        first = v.get("first_27_epochs", {}).get("warm", {})
        print(f"{k}: epochs {v['epochs']} best {v['best_epoch']} valid {v['valid_ndcg@10']} test NDCG@10 "
              f"{v['warm']['ndcg@10']:.4f} R@10 {v['warm']['recall@10']:.4f} | first 27: {first.get('ndcg@10')} "
              f"| s/epoch {v['train_s'] / max(1, v['epochs']):.2f}")
PY
for f in "$tmp"/*.log; do echo "== $f"; tail -4 "$f"; done > "$out/log.txt"
if [ -f "$tmp/throughput.log" ]; then cat "$tmp/throughput.log"; fi
