#!/usr/bin/env bash
# Job-submission examples for a running Ray cluster (ray_configs/cluster-*.yaml, or a
# local `ray start --head`). Point RAY_ADDRESS at the cluster's dashboard first:
#   export RAY_ADDRESS=http://127.0.0.1:8265
# Each job uploads this checkout (--working-dir .) and installs it on the nodes
# (runtime_env.yaml); torch comes from the nodes' image.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=(--working-dir . --runtime-env ray_configs/runtime_env.yaml)

case "${1:-}" in
  train)  # meta-training with 4 data-parallel workers (add --gpus on GPU nodes); the run
          # directory must be on storage every node sees, and the same command resumes.
    ray job submit "${RUNTIME[@]}" -- \
      bbopt train bbo --out /shared/bbopt/runs/lstm-ei --loss ei --iterations 3000 \
        --batch 64 --workers 4 ;;
  train-l2l)
    ray job submit "${RUNTIME[@]}" -- \
      bbopt train l2l --out /shared/bbopt/runs/l2l --iterations 5000 --workers 4 ;;
  bench)  # the black-box benchmark, every method side by side, 4 processes
    ray job submit "${RUNTIME[@]}" -- \
      bbopt bench --suite synthetic --methods learned,learned-dnc,gp-ei,random,optuna-tpe,optuna-gp,cma-es \
        --budget 100 --seeds 10 --jobs 4 --out /shared/bbopt/bench_out ;;
  tune)   # tune the MLP task under Ray Tune with the learned searcher, 4 trials at once
    ray job submit "${RUNTIME[@]}" -- \
      python ray_configs/tune_mlp.py --num-samples 40 --concurrency 4 ;;
  *)
    echo "usage: $0 train|train-l2l|bench|tune" >&2; exit 2 ;;
esac
