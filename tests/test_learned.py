"""The learned black-box optimizer: policy, meta-training, shipped weights, studies."""

from pathlib import Path

import numpy as np
import pytest
import torch
from bbopt.tasks.gp_prior import GPPrior

import bbopt
from bbopt.meta.trainer import BBOTrainConfig, BBOTrainer, load_policy, save_policy
from bbopt.nets.policy import BBOPolicy, reflect, rollout
from bbopt.optimizers.base import History, budget_options, make_optimizer
from bbopt.optimizers.learned import WEIGHTS_DIR
from bbopt.optimizers.random import sobol_points

# A seed stream apart from training (0..), validation (10_000_019..) and the benchmark
# functions (777_000_000..).
FRESH = 555_000_000


def test_reflect_folds_into_the_cube():
    v = torch.tensor([-1.5, -0.25, 0.0, 0.3, 1.0, 1.25, 2.5, 7.1])
    r = reflect(v)
    assert ((r >= 0) & (r <= 1)).all()
    assert torch.allclose(r, torch.tensor([0.5, 0.25, 0.0, 0.3, 1.0, 0.75, 0.5, 0.9]), atol=1e-6)


@pytest.mark.parametrize("core", ["lstm", "dnc"])
def test_rollout_shapes_and_gradients(core):
    torch.manual_seed(0)
    policy = BBOPolicy(core, hidden=16)
    fn = GPPrior().sample(3, 4, generator=torch.Generator().manual_seed(0))
    x, y = rollout(policy, fn, 12, parallel=2, generator=torch.Generator().manual_seed(1))
    assert x.shape == (3, 12, 4) and y.shape == (3, 12)
    assert ((x >= 0) & (x <= 1)).all()
    y.sum().backward()
    grads = [p.grad for p in policy.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_first_proposal_is_the_uniform_draw():
    policy = BBOPolicy("lstm", hidden=8)
    rs = policy.init(2, 3)
    u = torch.rand(2, 3)
    x, _ = policy.propose(rs, u, torch.randn(2, 3))
    assert torch.equal(x, u)


def _mean_value(policy, fn, horizon):
    """Mean scaled value along rollouts on fixed functions with fixed draws."""
    with torch.no_grad():
        _, y = rollout(policy, fn, horizon, generator=torch.Generator().manual_seed(9))
    return float(((y - fn.offset[:, None]) / fn.outputscale.sqrt()[:, None]).mean())


def test_tiny_meta_training_lowers_validation_loss(tmp_path):
    # Start from a policy that searches almost uniformly (gate ~0.12) and train briefly on
    # 2-D functions with the summed loss: the same loss on held-out functions goes down.
    torch.set_num_threads(1)
    config = BBOTrainConfig(dims=(2,), val_dims=(2,), horizon=20, batch=16, hidden=16,
                            layers=1, iterations=30, val_every=30, val_functions=8,
                            parallel=(1,), lr=1e-2, loss="summed")
    trainer = BBOTrainer(config, tmp_path, log=lambda msg: None)
    with torch.no_grad():
        trainer.policy.head.bias.copy_(torch.tensor([0.0, 0.0, -2.0, -2.0]))
    held_out = GPPrior(kernel="mixed").sample(64, 2, generator=torch.Generator().manual_seed(
        FRESH))
    before = _mean_value(trainer.policy, held_out, config.horizon)
    trainer.run()
    after = _mean_value(trainer.policy, held_out, config.horizon)
    assert after < before - 0.1, (before, after)
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    # Resume: a new trainer on the same folder continues from the last iteration.
    config.iterations = 33
    again = BBOTrainer(config, tmp_path, log=lambda msg: None)
    assert again.iteration == 30
    again.run()
    assert again.iteration == 33


def test_weights_round_trip_and_bad_files(tmp_path):
    policy = BBOPolicy("dnc", hidden=8, memory_slots=4, word_size=4, read_heads=1)
    save_policy(tmp_path / "p.pt", policy, {"loss": "oi"})
    loaded, meta = load_policy(tmp_path / "p.pt")
    assert meta == {"loss": "oi"}
    for a, b in zip(policy.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.save({"something": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a bbopt black-box policy"):
        load_policy(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="weights not found"):
        make_optimizer("learned", 2, 0, {"weights": str(tmp_path / "missing.pt")})


@pytest.mark.parametrize("name", ["learned-lstm.pt", "learned-dnc.pt"])
def test_shipped_weights_carry_metadata(name):
    path = WEIGHTS_DIR / name
    if name == "learned-dnc.pt" and not path.exists():
        pytest.skip("no DNC weights shipped")
    _, meta = load_policy(path)
    for key in ("command", "commit", "dims", "horizon", "loss", "validation"):
        assert key in meta, key


def _run(method: str, fn, n_trials: int, seed: int, options: dict | None = None
         ) -> np.ndarray:
    """Best-so-far values of ``method`` on a GP sample (batch of one), through the
    optimizer interface the study uses."""
    d = fn.dim
    opt = make_optimizer(method, d, seed, options or {})
    X, y = np.zeros((0, d)), np.zeros(0)
    for _ in range(n_trials):
        x = opt.propose(History(X, y, np.zeros((0, d)), np.zeros((0, d))), 1)
        v = float(fn(torch.as_tensor(x, dtype=fn.dtype)))
        X, y = np.vstack([X, x]), np.append(y, v)
    return np.minimum.accumulate(y)


def _regrets(method: str, dim: int, n_trials: int, seeds: int,
             prior: GPPrior | None = None, options: dict | None = None) -> np.ndarray:
    prior = prior or GPPrior(kernel="mixed")
    out = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(FRESH + 100 * dim + s)
        fn = prior.sample(1, dim, generator=g, dtype=torch.float64)
        _, f_min = fn.minimum(generator=g)
        out.append((_run(method, fn, n_trials, s, options)[-1] - float(f_min)) / float(
            fn.outputscale.sqrt()))
    return np.maximum(np.array(out), 0)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 5])
def test_shipped_weights_beat_random_search_on_fresh_gp_samples(dim):
    # At the training horizon (100 trials), on 24 fresh samples of the mixed prior (the
    # learned policy's regrets are bimodal, so fewer samples make a noisy median).
    learned = _regrets("learned", dim, 100, seeds=24)
    rand = _regrets("random", dim, 100, seeds=24)
    assert np.median(learned) < np.median(rand), (learned, rand)
    assert np.mean(np.log10(learned + 1e-6)) < np.mean(np.log10(rand + 1e-6))


@pytest.mark.slow
def test_the_gp_screen_beats_the_policys_own_draws():
    # The default screen (32 policy draws and 32 uniform points, the best by GP EI)
    # against screen=0, the policy's own draw, on the same fresh functions and seeds.
    # In 2-D, where the screen's GP models the function well after a few dozen trials.
    screened = _regrets("learned", 2, 60, seeds=12)
    plain = _regrets("learned", 2, 60, seeds=12, options={"screen": 0})
    assert np.median(np.log10(screened + 1e-6)) < np.median(np.log10(plain + 1e-6)) - 1.0
    assert (screened <= plain).mean() >= 0.75, (screened, plain)


def test_the_screen_reaches_an_optimum_on_the_cubes_corner():
    # Smooth functions often have their optimum on the search space's bounds (in 8-D,
    # two thirds of the training prior's samples have a coordinate there). The policy's
    # draws are reflected into the cube and never land on a face; the screen's local
    # candidates are clipped to it, so a corner optimum is found exactly.
    study = bbopt.Study({"a": bbopt.Float(0, 1), "b": bbopt.Float(0, 1)}, seed=3)
    for _ in range(60):
        t = study.ask()
        study.tell(t, (t.params["a"] - 1.3) ** 2 + (t.params["b"] + 0.4) ** 2)
    assert study.best_trial.params == {"a": 1.0, "b": 0.0}


def test_the_screen_never_repeats_a_trials_params_in_a_mixed_space():
    # With an integer and a choice, many points of the cube are one trial's params; the
    # screen scores candidates at the points their params encode to (Space.snap) and
    # never picks a queried one, although the optimum on a face draws them together.
    space = {"x": bbopt.Float(0, 1), "k": bbopt.Int(1, 5),
             "c": bbopt.Categorical(["a", "b"])}
    study = bbopt.Study(space, seed=0)
    for _ in range(20):
        for t in study.ask(3):  # parallel asks: pending trials are not repeated either
            study.tell(t, t.params["x"])
    seen = [tuple(t.params.values()) for t in study.trials]
    assert len(set(seen)) == len(seen) == 60
    assert study.best_trial.value == 0.0


def test_screen_option_is_checked_and_can_be_turned_off():
    for bad in (-1, 1.5, "8", True):
        with pytest.raises(ValueError, match="screen"):
            make_optimizer("learned", 2, 0, {"screen": bad})
    with pytest.raises(bbopt.StudyError, match="screen"):
        bbopt.Study({"a": bbopt.Float(0, 1)}, method="learned", screen=-3)
    # screen=0: every proposal is the policy's own draw from the study's Sobol point.
    fn = GPPrior().sample(1, 2, generator=torch.Generator().manual_seed(FRESH))
    X, y = np.zeros((0, 2)), np.zeros(0)
    opt = make_optimizer("learned", 2, 4, {"screen": 0})
    for _ in range(5):
        x = opt.propose(History(X, y, np.zeros((0, 2)), np.zeros((0, 2))), 1)
        X, y = np.vstack([X, x]), np.append(y, float(fn(torch.as_tensor(x, dtype=fn.dtype))))
    with torch.inference_mode():
        rs = opt._state(X, y)
        u = torch.as_tensor(sobol_points(2, 4, 5, 1), dtype=torch.float32)
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([4, 5]).generate_state(1)[0]))
        want = opt.policy.propose(rs, u, torch.randn(1, 2, generator=g))[0]
    got = opt.propose(History(X, y, np.zeros((0, 2)), np.zeros((0, 2))), 1)
    assert np.allclose(got, want.double().numpy(), atol=1e-6)


def test_in_8_to_12_dimensions_a_study_starts_with_its_sobol_points(monkeypatch):
    def history(X, pending=None):
        X = np.asarray(X).reshape(-1, 8)
        pending = np.zeros((0, 8)) if pending is None else pending
        return History(X, ((X - 0.3) ** 2).sum(1), pending, np.zeros((0, 8)))

    opt = make_optimizer("learned", 8, 5, {})
    X = np.zeros((0, 8))
    for _ in range(10):
        X = np.vstack([X, opt.propose(history(X), 1)])
    assert np.allclose(X[:9], sobol_points(8, 5, 0, 9), atol=1e-12)  # d + 1 start trials
    assert not np.allclose(X[9], sobol_points(8, 5, 9, 1)[0], atol=1e-3)  # then the screen
    # Parallel asks count every trial handed out: 4 at once, then 6 with two of them
    # told and two pending (the start's last 5 Sobol points and a screened pick).
    par = make_optimizer("learned", 8, 5, {})
    first = par.propose(history(np.zeros((0, 8))), 4)
    later = par.propose(history(first[:2], pending=first[2:]), 6)
    assert np.allclose(np.vstack([first, later[:5]]), sobol_points(8, 5, 0, 9), atol=1e-12)
    assert not np.allclose(later[5], sobol_points(8, 5, 9, 1)[0], atol=1e-3)
    # Below 8 and above 12 dimensions the screen picks from the second trial on.
    for d in (7, 13):
        other = make_optimizer("learned", d, 5, {})
        Xd = np.zeros((0, d))
        for _ in range(3):
            x = other.propose(History(Xd, ((Xd - 0.3) ** 2).sum(1), np.zeros((0, d)),
                                      np.zeros((0, d))), 1)
            Xd = np.vstack([Xd, x])
        assert not np.allclose(Xd[1:], sobol_points(d, 5, 1, 2), atol=1e-3), d
    # A start point that repeats a trial's params gives way to the screen's pick.
    import bbopt.optimizers.learned as learned
    monkeypatch.setattr(learned, "sobol_points", lambda d, seed, start, n: np.full((n, d), 0.5))
    rep = make_optimizer("learned", 8, 5, {})
    x0 = rep.propose(history(np.zeros((0, 8))), 1)
    x1 = rep.propose(history(x0), 1)
    assert np.allclose(x0, 0.5) and np.abs(x1 - 0.5).max() > 1e-9


def test_integer_start_points_never_repeat_a_trial():
    # Eight 0/1 parameters: the Sobol start's points snap to cells, and a repeated cell
    # is not asked again.
    study = bbopt.Study({f"b{i}": bbopt.Int(0, 1) for i in range(8)}, seed=1)
    for _ in range(6):
        for t in study.ask(2):
            study.tell(t, sum(t.params.values()))
    seen = [tuple(t.params.values()) for t in study.trials]
    assert len(set(seen)) == len(seen) == 12


@pytest.mark.slow
def test_past_the_horizon_and_above_the_covered_dimension():
    # 500 trials (5 episodes of the training horizon) in 4-D, and 100 trials in 20-D (the
    # weights cover 1..12): no crash, valid points, and better than random search. In 20-D
    # the prior's shortest lengthscales (0.05) make samples that no method can tell from
    # noise in 100 trials, so that case draws lengthscales from 0.3 to 2.
    cases = ((4, 500, GPPrior(kernel="mixed")),
             (20, 100, GPPrior(kernel="mixed", lengthscale_range=(0.3, 2.0))))
    for dim, n, prior in cases:
        learned = _regrets("learned", dim, n, seeds=8, prior=prior)
        rand = _regrets("random", dim, n, seeds=8, prior=prior)
        assert np.median(learned) < np.median(rand), (dim, learned, rand)
        assert (learned < rand).mean() >= 0.6, (dim, learned, rand)


@pytest.mark.parametrize("method", ["learned", "learned-dnc"])
@pytest.mark.parametrize("dim", [2, 6])  # 6: with subspace candidates in the screen
def test_ask_n_gives_distinct_pending_proposals(method, dim):
    space = bbopt.Space({"a": bbopt.Float(-1, 1), "b": bbopt.Float(0, 1),
                         **{f"c{i}": bbopt.Float(0, 1) for i in range(dim - 2)}})
    study = bbopt.Study(space, method=method, seed=3)
    for _ in range(6):
        t = study.ask()
        study.tell(t, (t.params["a"] - 0.3) ** 2 + sum(v for k, v in t.params.items()
                                                       if k != "a"))
    batch = study.ask(8)
    more = study.ask(4)  # while the 8 are pending
    pts = {tuple(t.params.values()) for t in batch + more}
    assert len(pts) == 12
    assert all(t.state is bbopt.TrialState.PENDING for t in batch + more)


def test_parallel_asks_in_the_refining_phase_are_distinct():
    # Told a budget of 20, a 3-D study refines from trial 16: a batch asked there (and
    # one more ask while it is pending) still spreads out, from fresh candidates for
    # each proposal scored with the pending ones as believers.
    space = bbopt.Space({f"x{i}": bbopt.Float(0, 1) for i in range(3)})
    study = bbopt.Study(space, seed=1, budget=20)
    for _ in range(16):
        t = study.ask()
        study.tell(t, sum((v - 0.3) ** 2 for v in t.params.values()))
    batch = study.ask(4) + study.ask(2)
    P = np.array([list(t.params.values()) for t in batch])
    gaps = np.sqrt(((P[:, None] - P[None]) ** 2).sum(-1)) + np.eye(6)
    assert gaps.min() > 5e-3  # not the same spot at the local candidates' small scales


def test_mixed_space_and_default_method():
    space = bbopt.Space({
        "lr": bbopt.Float(1e-5, 1e-1, log=True),
        "layers": bbopt.Int(1, 4),
        "act": bbopt.Categorical(["relu", "tanh", "gelu"]),
    })
    study = bbopt.Study(space, seed=0)
    assert study.method == "learned"
    for _ in range(25):
        t = study.ask()
        p = t.params
        assert 1e-5 <= p["lr"] <= 1e-1 and p["layers"] in (1, 2, 3, 4)
        assert p["act"] in ("relu", "tanh", "gelu")
        study.tell(t, abs(np.log10(p["lr"]) + 3) + abs(p["layers"] - 2)
                   + (p["act"] != "tanh"))
    assert study.best_trial.value < 1.5


def test_resumed_optimizer_replays_to_the_same_state():
    # The optimizer caches its recurrent state; a fresh one (a resumed study in a new
    # process) replays the history and must propose exactly the same points.
    fn = GPPrior().sample(1, 3, generator=torch.Generator().manual_seed(FRESH),
                          dtype=torch.float64)
    opt = make_optimizer("learned", 3, 7, {})
    X, y = np.zeros((0, 3)), np.zeros(0)
    for _ in range(15):
        h = History(X, y, np.zeros((0, 3)), np.zeros((0, 3)))
        x = opt.propose(h, 1)
        X, y = np.vstack([X, x]), np.append(y, float(fn(torch.as_tensor(x))))
    h = History(X, y, np.zeros((0, 3)), np.zeros((0, 3)))
    fresh = make_optimizer("learned", 3, 7, {})
    assert np.allclose(opt.propose(h, 3), fresh.propose(h, 3), atol=1e-6)


def test_weights_are_small():
    for p in Path(WEIGHTS_DIR).glob("*.pt"):
        assert p.stat().st_size < 20 * 2**20


def test_past_the_horizon_episodes_carry_the_best_trials():
    # The policy and the screen go on past the weights' horizon until they hold CARRY +
    # horizon trials; each later episode (from the next multiple of the horizon) starts
    # from the best CARRY earlier trials in the order they were made: its state is a fresh
    # optimizer's state after those trials and the episode's own.
    from bbopt.optimizers.learned import CARRY

    d, rng = 3, np.random.default_rng(0)
    opt = make_optimizer("learned", d, 5, {})
    T = opt.horizon
    start = T * (CARRY // T + 1)
    X, y = rng.random((start + 7, d)), rng.random(start + 7)
    with torch.inference_mode():
        assert opt._state(X[:T + 7], y[:T + 7]).n == T + 7  # no restart at the horizon
        assert opt._state(X[:start], y[:start]).n == CARRY
        rs_a = opt._state(X, y)
        assert opt._gp.n == rs_a.n == CARRY + 7
        keep = np.sort(np.argsort(y[:start])[:CARRY])
        fresh = make_optimizer("learned", d, 5, {})
        rs_b = fresh._state(np.concatenate([X[keep], X[start:]]),
                            np.concatenate([y[keep], y[start:]]))
    assert torch.equal(rs_a.out, rs_b.out)
    assert torch.equal(opt._gp.X, fresh._gp.X) and torch.equal(opt._gp.theta, fresh._gp.theta)


def test_training_starts_from_given_weights_and_rejects_bad_settings(tmp_path):
    src = BBOPolicy("lstm", hidden=8, layers=1)
    save_policy(tmp_path / "start.pt", src, {})
    config = BBOTrainConfig(hidden=8, layers=1, iterations=1, val_functions=2,
                            init=str(tmp_path / "start.pt"))
    trainer = BBOTrainer(config, tmp_path / "run", log=lambda msg: None)
    for a, b in zip(src.state_dict().values(), trainer.policy.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="this run asks for"):
        BBOTrainer(BBOTrainConfig(hidden=16, layers=1, init=str(tmp_path / "start.pt")),
                   tmp_path / "other", log=lambda msg: None)
    with pytest.raises(ValueError, match="regret_floor"):
        BBOTrainConfig(regret_floor=0.0)


def test_training_with_the_screen_in_the_loop(tmp_path):
    # With a screen, training rollouts and validation pick each query among the policy's
    # draws and the screen's other candidates; the loss still reaches the policy (through
    # the draws picked), and the weights file records the screen.
    torch.set_num_threads(1)
    config = BBOTrainConfig(dims=(3,), val_dims=(3,), horizon=12, batch=4, hidden=8,
                            layers=1, iterations=1, val_every=1, val_functions=4,
                            parallel=(1,), screen=8)
    trainer = BBOTrainer(config, tmp_path, log=lambda msg: None)
    loss = trainer.loss()
    loss.backward()
    grads = [p.grad for p in trainer.policy.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    trainer.policy.zero_grad()
    screened = trainer.val.evaluate(trainer.policy, config.horizon, screen=8)
    assert trainer.evaluate_validation() == screened
    assert screened != trainer.val.evaluate(trainer.policy, config.horizon)
    trainer.run()
    _, meta = load_policy(tmp_path / "best.pt")
    assert meta["screen"] == 8 and "GP screen 8" in meta["validation_metric"]
    with pytest.raises(ValueError, match="screen"):
        BBOTrainConfig(screen=-1)


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    with pytest.raises(ValueError, match="not a bbopt black-box policy"):
        load_policy(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a bbopt black-box policy"):
        make_optimizer("learned", 2, 0, {"weights": str(tmp_path / "junk.pt")})


def test_a_screened_ask_scores_policy_draws_uniform_points_and_perturbations(monkeypatch):
    """Each proposal is the screen's pick among ``screen`` policy draws,
    ``uniform_candidates(screen)`` uniform points and ``local_candidates(screen)``
    perturbations of the incumbent, all inside the cube."""
    from bbopt.nets.policy import local_candidates, uniform_candidates
    from bbopt.nets.screen import GPScreen

    seen = []
    score = GPScreen.score
    monkeypatch.setattr(GPScreen, "score", lambda self, C, pending=None: seen.append(C)
                        or score(self, C, pending))
    space = bbopt.Space({f"x{i}": bbopt.Float(0.0, 1.0) for i in range(5)})
    study = bbopt.Study(space, method="learned", seed=3)
    for _ in range(4):
        trial = study.ask()
        study.tell(trial, sum((v - 0.3) ** 2 for v in trial.params.values()))
    assert len(seen) == 2  # the screen scores from two observations on
    assert uniform_candidates(32) == 256
    for C in seen:
        assert C.shape == (1, 32 + uniform_candidates(32) + local_candidates(32), 5)
        assert ((C >= 0) & (C <= 1)).all()


def test_a_budget_times_the_last_episodes_exploration_margin():
    for bad in (0, -5, 2.5, "50", True):
        with pytest.raises(ValueError, match="budget"):
            make_optimizer("learned", 2, 0, {"budget": bad})
    with pytest.raises(bbopt.StudyError, match="budget"):
        bbopt.Study({"a": bbopt.Float(0, 1)}, method="learned-dnc", budget=0)
    assert budget_options("learned", 50) == {"budget": 50}
    assert budget_options("learned-dnc", 7) == {"budget": 7}
    assert budget_options("gp-ei", 50) == budget_options("random", 50) == {}
    # 250 trials at horizon 100: episodes of 100, 100 and 50; past the budget, unknown.
    opt = make_optimizer("learned", 3, 0, {"budget": 250})
    assert [opt._episode_budget(s) for s in (0, 100, 200, 300)] == [100, 100, 50, None]
    assert make_optimizer("learned", 3, 0, {})._episode_budget(0) is None
    # The screen refines over the last 20 trials before the budget (a fifth of the
    # horizon; of a 50-trial budget, the last 10), counted in its observations of the
    # episode (carried trials first); never without a budget or past it.
    assert opt._refine_after(0, 0) == 230 and opt._refine_after(200, 0) == 30
    assert make_optimizer("learned", 3, 0, {"budget": 50})._refine_after(0, 0) == 40
    assert make_optimizer("learned", 3, 0, {"budget": 450})._refine_after(400, 200) == 230
    assert opt._refine_after(300, 200) is None
    assert make_optimizer("learned", 3, 0, {})._refine_after(0, 0) is None
    assert make_optimizer("learned", 1, 0, {"budget": 100})._refine_after(0, 0) == 80
    # The screen of a study with a budget of 20 runs for 20 trials (its margin ends at
    # 12), and the option is stored with the study.
    study = bbopt.Study({"a": bbopt.Float(0, 1), "b": bbopt.Float(0, 1)}, seed=3, budget=20)
    for _ in range(4):
        t = study.ask()
        study.tell(t, (t.params["a"] - 0.3) ** 2 + t.params["b"])
    study.ask()
    assert study._optimizer._gp.budget == 20 and study._record.options == {"budget": 20}


def test_an_ask_runs_on_one_cpu_thread_and_restores_the_callers(monkeypatch):
    """Small tensor ops run faster on one thread than handed between many; the caller's
    torch thread setting is back after the ask, also when the ask fails."""
    from bbopt.nets.screen import GPScreen

    threads = []
    score = GPScreen.score
    monkeypatch.setattr(GPScreen, "score", lambda self, C, pending=None: threads.append(
        torch.get_num_threads()) or score(self, C, pending))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        study = bbopt.Study({"x": bbopt.Float(0.0, 1.0), "y": bbopt.Float(0.0, 1.0)},
                            method="learned", seed=0)
        for _ in range(4):
            trial = study.ask()
            assert torch.get_num_threads() == 2
            study.tell(trial, trial.params["x"] + trial.params["y"])
        assert threads == [1, 1]
        monkeypatch.setattr(GPScreen, "score", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            study.ask()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
