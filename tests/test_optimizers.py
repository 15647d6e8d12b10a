"""02-optimization: every from-scratch optimizer against torch.optim, NumPy = PyTorch, resume, bad arguments, runs.

Trajectories are compared in float64 over 100 steps of a random smooth problem with several
parameter tensors and non-default hyperparameters (weight decay included wherever the method has
it): our PyTorch optimizer, our NumPy optimizer and the reference must agree to 1e-10 at every step.
Yogi, which torch.optim lacks, is checked against a transcription of the published rule below.

Scripts tested here, NumPy and PyTorch: minibatch_sgd_numpy, minibatch_sgd_torch, momentum_numpy,
momentum_torch, nesterov_numpy, nesterov_torch, adagrad_numpy, adagrad_torch, rmsprop_numpy,
rmsprop_torch, adadelta_numpy, adadelta_torch, adam_numpy, adam_torch, yogi_numpy, yogi_torch,
adamw_numpy, adamw_torch, nadam_numpy, nadam_torch.
"""

import contextlib
import io

import numpy as np
import pytest
import torch

# method -> (class name, non-default hyperparameters, torch.optim reference or None, bad arguments)
METHODS = {
    "minibatch_sgd": ("MinibatchSGD", dict(lr=0.05, weight_decay=0.01), torch.optim.SGD, [dict(lr=-0.1)]),
    "momentum": (
        "Momentum",
        dict(lr=0.02, momentum=0.8, weight_decay=0.01),
        torch.optim.SGD,
        [dict(lr=-0.1), dict(momentum=-0.5)],
    ),
    "nesterov": (
        "Nesterov",
        dict(lr=0.02, momentum=0.8, weight_decay=0.01),
        lambda ps, **kw: torch.optim.SGD(ps, nesterov=True, **kw),
        [dict(lr=-0.1), dict(momentum=-0.5)],
    ),
    "adagrad": (
        "Adagrad",
        dict(lr=0.05, eps=1e-6, weight_decay=0.01),
        torch.optim.Adagrad,
        [dict(lr=-0.1), dict(eps=0.0)],
    ),
    "rmsprop": (
        "RMSProp",
        # eps 1e-2: with a tiny eps a coordinate that reaches its minimum turns rounding noise in its
        # gradient into large steps, and torch's own vectorised and scalar CPU paths then disagree.
        dict(lr=0.005, alpha=0.9, eps=1e-2, weight_decay=0.01),
        torch.optim.RMSprop,
        [dict(lr=-0.1), dict(alpha=1.5), dict(eps=-1e-8)],
    ),
    "adadelta": (
        "Adadelta",
        dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.01),
        torch.optim.Adadelta,
        [dict(lr=-0.1), dict(rho=1.5), dict(eps=0.0)],
    ),
    "adam": (
        "Adam",
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
        torch.optim.Adam,
        [dict(lr=-0.1), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)), dict(eps=0.0)],
    ),
    "yogi": (
        "Yogi",
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.01),
        None,
        [dict(lr=-0.1), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)), dict(eps=0.0)],
    ),
    "adamw": (
        "AdamW",
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
        torch.optim.AdamW,
        [dict(lr=-0.1), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)), dict(eps=0.0)],
    ),
    "nadam": (
        "NAdam",
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, momentum_decay=3e-3),
        torch.optim.NAdam,
        [dict(lr=-0.1), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)), dict(eps=0.0)],
    ),
}
STEPS = 100


@pytest.fixture(scope="module")
def scripts(load_script):
    """load(method, framework) -> the imported 02-optimization/<method>_<framework>.py."""
    return lambda method, framework: load_script(f"02-optimization/{method}_{framework}.py")


def smooth_problem(seed=0):
    """Three parameter tensors of different shapes and a smooth, non-quadratic loss over them."""
    rng = np.random.default_rng(seed)
    shapes = [(5, 3), (4,), (2, 3, 2)]
    params0 = [rng.standard_normal(s) for s in shapes]
    A = [torch.from_numpy(rng.uniform(0.5, 2.0, s)) for s in shapes]
    C = [torch.from_numpy(rng.standard_normal(s)) for s in shapes]

    def loss(ps):
        return sum(torch.log1p((a * p - c) ** 2).sum() + 0.01 * (p**4).sum() for p, a, c in zip(ps, A, C))

    return params0, loss


def grads_at(loss, params):
    """Gradients of the loss at NumPy parameters, by torch autograd in float64."""
    ts = [torch.tensor(p, requires_grad=True) for p in params]
    return [g.numpy() for g in torch.autograd.grad(loss(ts), ts)]


def torch_trajectory(make_opt, params0, loss, steps, ps=None, opt=None):
    """Parameters after each of `steps` steps of a torch optimizer (`make_opt(params)`)."""
    ps = ps if ps is not None else [torch.tensor(p, requires_grad=True) for p in params0]
    opt = opt if opt is not None else make_opt(ps)
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        loss(ps).backward()
        opt.step()
        traj.append([p.detach().numpy().copy() for p in ps])
    return traj


def numpy_trajectory(opt, params0, loss, steps):
    """Parameters after each step of a NumPy optimizer, whose step(params, grads) updates in place."""
    ps = [p.copy() for p in params0]
    traj = []
    for _ in range(steps):
        opt.step(ps, grads_at(loss, ps))
        traj.append([p.copy() for p in ps])
    return traj


def yogi_reference(params0, loss, steps, lr, betas, eps, weight_decay, v0=1e-6):
    """Yogi (Zaheer et al. 2018) with Adam's bias correction, transcribed from docs/references.md."""
    b1, b2 = betas
    ps = [p.copy() for p in params0]
    m = [np.zeros_like(p) for p in ps]
    v = [np.full_like(p, v0) for p in ps]
    traj = []
    for t in range(1, steps + 1):
        for p, g, m_, v_ in zip(ps, grads_at(loss, ps), m, v):
            g = g + weight_decay * p
            m_[:] = b1 * m_ + (1 - b1) * g
            v_[:] = v_ - (1 - b2) * np.sign(v_ - g * g) * g * g
            p -= lr * (m_ / (1 - b1**t)) / (np.sqrt(v_ / (1 - b2**t)) + eps)
        traj.append([p.copy() for p in ps])
    return traj


@contextlib.contextmanager
def default_dtype(dtype):
    """torch.optim keeps some scalar state (NAdam's mu_product, step counts) as tensors of the default
    dtype: in float32 the reference itself would round its float64 trajectory at 1e-10."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def assert_same_trajectory(a, b, what):
    for step, (pa, pb) in enumerate(zip(a, b), start=1):
        err = max(np.abs(x - y).max() for x, y in zip(pa, pb))
        assert err <= 1e-10, f"{what}: step {step} differs by {err:.3g}"


@pytest.mark.parametrize("method", METHODS)
def test_trajectory_matches_reference(scripts, method):
    """Ours (PyTorch and NumPy) = torch.optim (or the Yogi transcription) at every one of 100 steps."""
    cls, kw, reference, _ = METHODS[method]
    params0, loss = smooth_problem()
    ours_torch = torch_trajectory(lambda ps: getattr(scripts(method, "torch"), cls)(ps, **kw), params0, loss, STEPS)
    ours_numpy = numpy_trajectory(getattr(scripts(method, "numpy"), cls)(**kw), params0, loss, STEPS)
    if reference is None:
        ref = yogi_reference(params0, loss, STEPS, **kw)
    else:
        with default_dtype(torch.float64):
            ref = torch_trajectory(lambda ps: reference(ps, **kw), params0, loss, STEPS)
    assert_same_trajectory(ours_torch, ref, f"{method} torch vs reference")
    assert_same_trajectory(ours_numpy, ref, f"{method} numpy vs reference")
    moved = max(np.abs(p - p0).max() for p, p0 in zip(ref[-1], params0))
    assert moved > 1e-2, "the problem must move the parameters, or the comparison proves nothing"
    assert loss([torch.from_numpy(p) for p in ref[-1]]) < loss([torch.from_numpy(p) for p in params0])


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_resume(scripts, method):
    """50 steps, save, reload into a fresh optimizer and fresh tensors, 50 more = 100 uninterrupted."""
    cls, kw, _, _ = METHODS[method]
    Opt = getattr(scripts(method, "torch"), cls)
    params0, loss = smooth_problem(seed=1)
    straight = torch_trajectory(lambda ps: Opt(ps, **kw), params0, loss, 100)

    ps = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = Opt(ps, **kw)
    torch_trajectory(None, params0, loss, 50, ps=ps, opt=opt)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in ps], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    ps2 = [p.clone().requires_grad_(True) for p in saved["params"]]
    opt2 = Opt(ps2, **kw)
    opt2.load_state_dict(saved["opt"])
    resumed = torch_trajectory(None, params0, loss, 50, ps=ps2, opt=opt2)
    for a, b in zip(straight[-1], resumed[-1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_bad_hyperparameters_raise(scripts, method):
    """Negative lr, betas outside [0, 1), eps <= 0 (and the like) are a ValueError naming the argument."""
    cls, kw, _, bad = METHODS[method]
    for framework in ("numpy", "torch"):
        Opt = getattr(scripts(method, framework), cls)
        for args in bad:
            name = next(iter(args))
            with pytest.raises(ValueError, match=name if name != "lr" else "learning rate"):
                Opt(**({**kw, **args} if framework == "numpy" else {**kw, **args, "params": [torch.zeros(2)]}))


BAD_FLAGS = [
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS)
@pytest.mark.parametrize("script", ["adam_numpy", "nesterov_torch", "minibatch_sgd_numpy", "yogi_torch"])
def test_bad_flags_exit_2_naming_the_flag(load_script, monkeypatch, capsys, script, argv, flag):
    """A bad value is an argparse error (exit 2) that names the flag, raised before any data is read."""
    module = load_script(f"02-optimization/{script}.py")
    monkeypatch.setattr(module, "fashion_mnist", lambda *a, **k: pytest.fail("data loaded before the flag check"))
    with pytest.raises(SystemExit) as exc:
        module.main([*argv, "--smoke"])
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script,argv,flag",
    [
        ("adam_torch", ["--betas", "0.9", "1.0"], "--betas"),
        ("rmsprop_numpy", ["--alpha", "1"], "--alpha"),
        ("nesterov_numpy", ["--momentum", "0"], "--momentum"),  # Nesterov needs momentum > 0: p.error
        ("nadam_torch", ["--momentum-decay", "-1"], "--momentum-decay"),
        ("adadelta_numpy", ["--eps", "0"], "--eps"),
        ("momentum_torch", ["--hidden", "64", "0"], "--hidden"),
    ],
)
def test_bad_optimizer_flags_exit_2(load_script, monkeypatch, capsys, script, argv, flag):
    module = load_script(f"02-optimization/{script}.py")
    monkeypatch.setattr(module, "fashion_mnist", lambda *a, **k: pytest.fail("data loaded before the flag check"))
    with pytest.raises(SystemExit) as exc:
        module.main([*argv, "--smoke"])
    assert exc.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["adam", "nesterov"])
def test_unavailable_device_exits_2_before_loading_data(load_script, monkeypatch, capsys, method):
    module = load_script(f"02-optimization/{method}_torch.py")
    missing = "mps" if torch.cuda.is_available() else "cuda"  # no machine has both
    monkeypatch.setattr(module, "fashion_mnist", lambda *a, **k: pytest.fail("data loaded before the device check"))
    with pytest.raises(SystemExit) as exc:
        module.main(["--device", missing, "--smoke"])
    assert exc.value.code == 2 and f"--device {missing}: not available" in capsys.readouterr().err


@pytest.mark.parametrize("method", METHODS)
def test_nan_hyperparameters_raise(scripts, method):
    """NaN fails every range check of the classes too (a `lr < 0` test would let it through)."""
    cls, kw, _, _ = METHODS[method]
    for framework in ("numpy", "torch"):
        Opt = getattr(scripts(method, framework), cls)
        extra = {} if framework == "numpy" else {"params": [torch.zeros(2)]}
        for name in ("lr", "eps"):
            if name in kw:
                with pytest.raises(ValueError):
                    Opt(**{**kw, name: float("nan"), **extra})


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("method", METHODS)
def test_smoke_run(scripts, method, framework, tmp_path):
    """`--smoke` trains on 2k real images for one epoch: the loss falls and accuracy is far above chance."""
    m = scripts(method, framework).main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"] and m["test_acc"] > 0.5
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "loss.png").stat().st_size > 10_000


def test_optimizer_benchmark_runs(load_script, tmp_path):
    """benchmarks/optimizers.py without its training part: trajectories descend, step() times are measured."""
    out = load_script("benchmarks/optimizers.py").main(
        ["--skip-training", "--repeats", "1", "--fig-dir", str(tmp_path), "--out", str(tmp_path / "o.json")]
    )
    assert len(out["trajectories"]) == 2 * len(METHODS)
    start_values = {"quadratic": 0.1 * 25 + 2 * 4, "Rosenbrock": 2.5**2 + 100 * (2 - 2.25) ** 2}
    for name, final in out["trajectories"].items():
        start = next(v for k, v in start_values.items() if k in name)
        assert final["f"] < 0.1 * start, name
    assert set(out["step_times"]) == set(METHODS)
    assert all(r["ours_ms"] > 0 and r.get("ratio_vs_loop", 1) > 0 for r in out["step_times"].values())
    assert (tmp_path / "optimizer_trajectories.png").stat().st_size > 50_000
