"""Tune the digits MLP (tasks/hpo.py: ``digits_mlp``) with Ray Tune and bbopt's searcher.

Each Tune trial trains one MLP (Adam, 20 epochs on scikit-learn's digits, no download)
and reports its validation error; ``BBOptSearch`` proposes the hyperparameters from the
task's own bbopt space, several trials running at once.

Locally (starts a Ray instance on this machine; a minute or two on a laptop CPU)::

    python ray_configs/tune_mlp.py --num-samples 12 --concurrency 2 --num-cpus 2

On a cluster, as a Ray job from the repository root::

    ray job submit --working-dir . --runtime-env ray_configs/runtime_env.yaml -- \\
        python ray_configs/tune_mlp.py --num-samples 64 --concurrency 8

Results go to ``--storage-path`` (default ``~/ray_results``) under ``--name``; the
searcher's checkpoint there (``searcher-state-*.pkl``) holds the whole bbopt study, so
``BBOptSearch().restore_from_dir(path)`` brings it back for inspection or warm starts.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import ray
from bbopt.tasks.hpo import digits_mlp
from ray import tune

from bbopt import BBOptSearch


def train_mlp(config: dict[str, Any]) -> None:
    """One Tune trial: train the MLP at ``config`` and report its validation error."""
    import torch

    torch.set_num_threads(1)  # one CPU per trial: concurrent trials must not oversubscribe
    tune.report({"error": digits_mlp(config)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=12, help="trials in all (default 12)")
    p.add_argument("--concurrency", type=int, default=2,
                   help="trials running at once (default 2)")
    p.add_argument("--method", default="learned", help="bbopt optimizer (default learned)")
    p.add_argument("--seed", type=int, default=0, help="the study's seed (default 0)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="start a local Ray with this many CPUs (default: connect to "
                        "RAY_ADDRESS when set, e.g. inside a Ray job, else start one)")
    p.add_argument("--storage-path", default=None,
                   help="where Tune writes results (default ~/ray_results)")
    p.add_argument("--name", default="tune_mlp", help="experiment name (default tune_mlp)")
    args = p.parse_args(argv)
    if args.num_samples < 1 or args.concurrency < 1:
        p.error("--num-samples and --concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_cpus is not None:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    else:
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    searcher = BBOptSearch(digits_mlp.space, metric="error", mode="min",
                           method=args.method, seed=args.seed)
    storage_path = os.path.abspath(os.path.expanduser(args.storage_path)) \
        if args.storage_path else None
    tuner = tune.Tuner(
        tune.with_resources(train_mlp, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=args.num_samples,
                                    max_concurrent_trials=args.concurrency),
        run_config=tune.RunConfig(name=args.name, storage_path=storage_path, verbose=1),
    )
    results = tuner.fit()
    best = results.get_best_result(metric="error", mode="min")
    print(f"best validation error {best.metrics['error']:.4f} with config {best.config}")
    print(f"results and the searcher's checkpoint: {results.experiment_path}")


if __name__ == "__main__":
    main()
