"""The gradient benchmark's cache: runs are reused only when made the same way."""

import torch

from bbopt.bench_gradient import benchmark_gradient, plan
from bbopt.nets.l2l import L2LNet
from bbopt.optimizers.l2l import save_l2l


def _tiny_bench(tmp_path):
    """A tiny rule's weights file, the bench's log lines and its arguments."""
    weights = tmp_path / "w.pt"
    save_l2l(weights, L2LNet(hidden=4, layers=1), {})
    logs: list[str] = []
    args = dict(families=["quadratic"], seeds=1, problems=2, steps=5, out=tmp_path / "bench",
                log=logs.append, weights=[str(weights)])
    return weights, logs, args


def test_cached_runs_of_replaced_weights_are_made_again(tmp_path):
    weights, logs, args = _tiny_bench(tmp_path)
    first = benchmark_gradient(**args)
    n = len(plan(["quadratic"], 1, [str(weights)]))
    assert logs[0] == f"0 runs cached, {n} to run"
    logs.clear()
    benchmark_gradient(**args)
    assert logs == [f"{n} runs cached, 0 to run"]
    torch.manual_seed(1)  # other weights in the same file: only its runs are made again
    save_l2l(weights, L2LNet(hidden=4, layers=1, lr=0.1), {})
    logs.clear()
    again = benchmark_gradient(**args)
    assert logs[0] == (f"{n - 1} runs cached, 1 to run (1 cached runs with other "
                       "--problems, --steps, --problem-seed or weights ignored)")
    name = f"lstm:{weights}"
    before = first["families"]["quadratic"][name]["5"]["median"]
    after = again["families"]["quadratic"][name]["5"]["median"]
    assert after != before
    assert again["families"]["quadratic"]["adam"] == first["families"]["quadratic"]["adam"]


def test_another_problem_seed_draws_other_problems_and_reuses_nothing(tmp_path):
    weights, logs, args = _tiny_bench(tmp_path)
    bench = benchmark_gradient(**args)
    n = len(plan(["quadratic"], 1, [str(weights)]))
    logs.clear()
    other = benchmark_gradient(**args, problem_seed=777_000_000)
    assert logs[0] == (f"0 runs cached, {n} to run ({n} cached runs with other "
                       "--problems, --steps, --problem-seed or weights ignored)")
    start = [s["quadratic"]["adam"]["0"]["median"] for s in (bench["families"],
                                                           other["families"])]
    assert start[0] != start[1]  # other problems
    table = (args["out"] / "table.md").read_text()
    assert "problem seeds 777000000 + 1009 s" in table
    assert f"| lstm:{weights} / tuned adam |" in table  # a ratio row for every rule
    assert f"| problems where lstm:{weights} < tuned adam |" in table
