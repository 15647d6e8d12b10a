"""05-rnns NumPy networks: hand-written BPTT of the RNN, LSTM, GRU and bidirectional RNN against torch, and the runs.

Each network (2 layers, several steps, batch > 1, random initial state, non-zero biases) is run in
float64 beside torch's nn.RNN / nn.LSTM / nn.GRU holding the same weights; random, non-uniform
upstream gradients are fed on the outputs AND on the final states, and every gradient (weights,
biases, inputs, initial state) must agree to a relative error of 1e-7 (tests/gradcheck.py).
"""

import json

import numpy as np
import pytest
import torch
from gradcheck import check_adam_step, rel_error

T, B, D, H, L = 7, 3, 5, 6, 2
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def random_layers(rng, cell, bidirectional=False):
    """Random float64 weights in the scripts' layout: per layer (per direction) W_xh (D, G*H), W_hh (H, G*H), biases."""
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    dirs = 2 if bidirectional else 1
    layers = []
    for l in range(L):
        d_in = D if l == 0 else H * dirs
        ps = []
        for _ in range(dirs):
            p = {"W_xh": rng.standard_normal((d_in, G * H)) * 0.5, "W_hh": rng.standard_normal((H, G * H)) * 0.5}
            if cell == "gru":  # torch's GRU needs both biases: r multiplies (h W_hn + b_hn)
                p |= {"b_xh": rng.standard_normal(G * H) * 0.5, "b_hh": rng.standard_normal(G * H) * 0.5}
            else:
                p["b_h"] = rng.standard_normal(G * H) * 0.5
            ps.append(p)
        layers.append(ps if bidirectional else ps[0])
    return layers


def torch_twin(layers, cell, bidirectional=False):
    """torch's module in float64 with our weights copied in (torch stores W transposed, gates in the same order)."""
    m = TORCH[cell](D, H, num_layers=L, bidirectional=bidirectional).double()
    with torch.no_grad():
        for l, layer in enumerate(layers):
            for k, p in enumerate(layer if bidirectional else [layer]):
                sfx = f"l{l}" + ("_reverse" if k else "")
                getattr(m, f"weight_ih_{sfx}").copy_(torch.from_numpy(p["W_xh"].T))
                getattr(m, f"weight_hh_{sfx}").copy_(torch.from_numpy(p["W_hh"].T))
                getattr(m, f"bias_ih_{sfx}").copy_(torch.from_numpy(p.get("b_xh", p.get("b_h"))))
                getattr(m, f"bias_hh_{sfx}").copy_(torch.from_numpy(p.get("b_hh", np.zeros(p["W_hh"].shape[1]))))
    return m


def check_against_torch(layers, cell, run_numpy, bidirectional=False, seed=0):
    """run_numpy(x, state) -> (out, final state tuple, backward(dout, dstate tuple) -> (grads, dx, dstate0 tuple))."""
    rng = np.random.default_rng(seed)
    dirs = 2 if bidirectional else 1
    n_state = 2 if cell == "lstm" else 1
    x = rng.standard_normal((T, B, D))
    state = tuple(rng.standard_normal((L * dirs, B, H)) for _ in range(n_state))
    out, final, backward = run_numpy(x, state)
    dout = rng.standard_normal(out.shape)
    dfinal = tuple(rng.standard_normal(s.shape) for s in final)
    grads, dx, dstate0 = backward(dout, dfinal)

    m = torch_twin(layers, cell, bidirectional)
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in state]
    out_ref, final_ref = m(xt, tuple(st) if cell == "lstm" else st[0])
    final_ref = final_ref if cell == "lstm" else (final_ref,)
    loss = (out_ref * torch.from_numpy(dout)).sum() + sum(
        (f * torch.from_numpy(d)).sum() for f, d in zip(final_ref, dfinal)
    )
    loss.backward()

    assert out.shape == (T, B, H * dirs) and rel_error(out, out_ref) <= 1e-12
    for f, f_ref in zip(final, final_ref, strict=True):
        assert rel_error(f, f_ref) <= 1e-12
    assert rel_error(dx, xt.grad) <= 1e-7
    for d, s in zip(dstate0, st, strict=True):
        assert rel_error(d, s.grad) <= 1e-7
    assert_layer_grads(grads, m, cell, bidirectional)


def assert_layer_grads(grads, m, cell, bidirectional=False, tol=1e-7):
    """Every layer's (and direction's) weight and bias gradients against those autograd left on torch's twin m."""
    for l, layer in enumerate(grads):
        for k, g in enumerate(layer if bidirectional else [layer]):
            sfx = f"l{l}" + ("_reverse" if k else "")
            assert rel_error(g["W_xh"], getattr(m, f"weight_ih_{sfx}").grad.T) <= tol, (l, k, "W_xh")
            assert rel_error(g["W_hh"], getattr(m, f"weight_hh_{sfx}").grad.T) <= tol, (l, k, "W_hh")
            if cell == "gru":
                assert rel_error(g["b_xh"], getattr(m, f"bias_ih_{sfx}").grad) <= tol, (l, k, "b_xh")
                assert rel_error(g["b_hh"], getattr(m, f"bias_hh_{sfx}").grad) <= tol, (l, k, "b_hh")
            else:  # one bias b_h = b_ih + b_hh: its gradient is either's
                assert rel_error(g["b_h"], getattr(m, f"bias_ih_{sfx}").grad) <= tol, (l, k, "b_h")


# --- the BPTT of every network against torch -------------------------------------------------


@pytest.mark.parametrize("script,cell", [("lstm", "lstm"), ("lstm", "rnn"), ("gru", "gru"), ("gru", "rnn")])
def test_gated_scripts_bptt_equal_torch(load_script, script, cell):
    """lstm_numpy and gru_numpy: the gated cell and the script's own vanilla-RNN baseline."""
    mod = load_script(f"05-rnns/{script}_numpy.py")
    layers = random_layers(np.random.default_rng(1), cell)

    def run(x, state):
        out, final, caches = mod.forward(layers, x, state, cell=cell)
        return out, final, lambda dout, dfinal: mod.backward(dout, dfinal, caches, cell=cell)

    check_against_torch(layers, cell, run)


@pytest.mark.parametrize(
    "script, seed, bidirectional",
    [("05-rnns/rnn_numpy.py", 2, False), ("05-rnns/birnn_numpy.py", 3, True)],
)
def test_tanh_rnn_bptt_equals_torch(load_script, script, seed, bidirectional):
    """rnn_numpy: the stacked tanh RNN, state h (L, B, H) as nn.RNN's. birnn_numpy: 2 bidirectional layers
    (layer 2 reads 2H features), state (2L, B, H) in torch's order."""
    mod = load_script(script)
    layers = random_layers(np.random.default_rng(seed), "rnn", bidirectional=bidirectional)

    def run(x, state):
        out, h_T, caches = mod.forward(layers, x, state[0])

        def backward(dout, dfinal):
            grads, dx, dh0 = mod.backward(dout, dfinal[0], caches)
            return grads, dx, (dh0,)

        return out, (h_T,), backward

    check_against_torch(layers, "rnn", run, bidirectional=bidirectional)


def test_birnn_unidirectional_twin_is_the_plain_rnn(load_script):
    """With one direction per layer birnn_numpy's stack is exactly rnn_numpy's (same weights, same numbers)."""
    bi, uni = load_script("05-rnns/birnn_numpy.py"), load_script("05-rnns/rnn_numpy.py")
    layers = random_layers(np.random.default_rng(4), "rnn")
    x, h0 = np.random.default_rng(5).standard_normal((T, B, D)), np.random.default_rng(6).standard_normal((L, B, H))
    out_a, h_a, _ = bi.forward([[p] for p in layers], x, h0)
    out_b, h_b, _ = uni.forward(layers, x, h0)
    assert np.array_equal(out_a, out_b) and np.array_equal(h_a, h_b)


# --- clipping by global norm, and the layer arguments ----------------------------------------

SCRIPTS = ["rnn", "lstm", "gru", "birnn"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_clip_grad_norm(load_script, script):
    """Above max_norm: scaled as torch's clip_grad_norm_ scales (global norm -> max_norm); below: untouched."""
    mod = load_script(f"05-rnns/{script}_numpy.py")
    rng = np.random.default_rng(7)
    grads = {"a": rng.standard_normal((4, 3)) * 3, "b": rng.standard_normal(5), "c": rng.standard_normal((2, 2, 2))}
    total = np.sqrt(sum((g**2).sum() for g in grads.values()))
    ts = [torch.tensor(g) for g in grads.values()]
    for t in ts:
        t.grad = t.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(ts, 1.0)
    norm = mod.clip_grad_norm(grads, 1.0)
    assert abs(norm - total) <= 1e-12 * total and abs(norm - float(ref_norm)) <= 1e-12 * total
    for g, t in zip(grads.values(), ts):
        assert rel_error(g, t.grad) <= 1e-12
    assert abs(np.sqrt(sum((g**2).sum() for g in grads.values())) - 1.0) <= 1e-5
    before = {k: v.copy() for k, v in grads.items()}
    assert abs(mod.clip_grad_norm(grads, 10.0) - np.sqrt(sum((g**2).sum() for g in before.values()))) <= 1e-12
    assert all(np.array_equal(grads[k], before[k]) for k in grads)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_layer_arguments_raise(load_script, script):
    mod = load_script(f"05-rnns/{script}_numpy.py")
    rng = np.random.default_rng(0)
    for args in [(0, 4, 2), (3, 0, 2), (3, 4, 0)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            mod.init_layers(rng, *args)
    if script in ("lstm", "gru"):
        with pytest.raises(ValueError, match="cell must be one of"):
            mod.init_layers(rng, 3, 4, 2, cell="transformer")


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_flags_exit_2(load_script, script, tmp_path, capsys):
    """Bad values exit 2 naming the flag, before anything trains (the renamed flags among them)."""
    mod = load_script(f"05-rnns/{script}_numpy.py")
    length = {"rnn": "--seq-len", "birnn": "--seq-len", "lstm": "--gap", "gru": "--gap"}[script]
    cases = [
        ["--epochs", "0"],
        ["--lr", "-1"],
        ["--lr", "nan"],
        ["--hidden-size", "x"],
        ["--clip", "-1"],
        [length, "0"],
    ]
    if script != "rnn":
        cases += [["--steps-per-epoch", "0"], ["--symbols", "1"]]
    else:
        cases += [["--seq-len", "5000"]]  # longer than the text: no segment to train on
    for bad in cases:
        with pytest.raises(SystemExit) as exc:
            mod.main([*bad, "--smoke", "--out-dir", str(tmp_path)])
        assert exc.value.code == 2, bad
        assert bad[0] in capsys.readouterr().err, bad


# --- the tasks and the smoke runs ------------------------------------------------------------


def test_birnn_labels(load_script):
    """y[t] = 1 exactly where x_t occurs both before and after t, checked by brute force."""
    mod = load_script("05-rnns/birnn_numpy.py")
    x, y = mod.make_batch(np.random.default_rng(8), 50, 9, 4)
    seq = x.argmax(axis=2)
    for b in range(50):
        for t in range(9):
            s = list(seq[:, b])
            assert y[t, b] == int(s[t] in s[:t] and s[t] in s[t + 1 :])


def test_rnn_numpy_smoke(load_script, tmp_path):
    m = load_script("05-rnns/rnn_numpy.py").main(["--smoke", "--seed", "0", "--out-dir", str(tmp_path)])
    V = m["vocab_size"]
    assert m["train_ppl"] < V / 3  # the uniform guess is V
    assert min(m["history"]["val_ppl"]) < 0.8 * m["init_val_ppl"]
    assert m["sample"].startswith("the river ") and len(m["sample"]) == len("the river ") + 300
    assert json.loads((tmp_path / "metrics.json").read_text())["train_ppl"] == m["train_ppl"]
    assert (tmp_path / "perplexity.png").stat().st_size > 0


@pytest.mark.parametrize("script,cell", [("lstm", "lstm"), ("gru", "gru")])
def test_gated_smoke(load_script, tmp_path, script, cell):
    m = load_script(f"05-rnns/{script}_numpy.py").main(["--smoke", "--seed", "0", "--out-dir", str(tmp_path)])
    assert m[f"{cell}_final_loss"] < m[f"{cell}_first_loss"] and m["rnn_final_loss"] < m["rnn_first_loss"]
    assert m[f"{cell}_val_acc"] > m["chance"] + 0.3  # a 5-step gap is learned within seconds
    assert json.loads((tmp_path / "metrics.json").read_text())[f"{cell}_val_acc"] == m[f"{cell}_val_acc"]
    assert (tmp_path / "learning_curves.png").stat().st_size > 0


def test_birnn_smoke(load_script, tmp_path):
    m = load_script("05-rnns/birnn_numpy.py").main(["--smoke", "--seed", "0", "--out-dir", str(tmp_path)])
    for name in ("birnn", "uni"):
        assert m[f"{name}_final_loss"] < m[f"{name}_first_loss"]
        assert m[f"{name}_val_acc"] >= 1 - m["positive_rate"] - 0.01  # at least the majority answer
    assert 0.8 < m["forward_only_ceiling"] < 0.9
    assert (tmp_path / "learning_curves.png").stat().st_size > 0 and (tmp_path / "metrics.json").exists()


# --- the whole loss-and-gradient functions (input -> recurrent layers -> head -> softmax CE) ------


def head(rng, features, classes):
    """The output layer W_hy (features, classes), b_y (classes,) in float64, non-zero."""
    return {"W_hy": rng.standard_normal((features, classes)), "b_y": rng.standard_normal(classes) * 0.5}


def assert_head_grads(grads, loss, W_hy, b_y, loss_ref):
    assert abs(loss - loss_ref.item()) <= 1e-12 * abs(loss_ref.item())
    assert rel_error(grads["W_hy"], W_hy.grad) <= 1e-7
    assert rel_error(grads["b_y"], b_y.grad) <= 1e-7


def test_rnn_lm_loss_and_grads_equal_autograd(load_script):
    """rnn_numpy's `lm_loss_and_grads` end to end: one-hot characters, 2 tanh layers from a random h0, the
    per-step head, the mean cross-entropy over T*B predictions; the loss, every parameter's gradient and
    h_T against nn.RNN + the same head under autograd, float64."""
    mod = load_script("05-rnns/rnn_numpy.py")
    rng = np.random.default_rng(20)
    V = D  # the one-hot input has one feature per character
    params = {"layers": random_layers(rng, "rnn"), **head(rng, H, V)}
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    h0 = rng.standard_normal((L, B, H))
    loss, grads, h_T = mod.lm_loss_and_grads(params, X, Y, h0)

    m = torch_twin(params["layers"], "rnn")
    W_hy, b_y = (torch.tensor(params[k], requires_grad=True) for k in ("W_hy", "b_y"))
    x = torch.nn.functional.one_hot(torch.from_numpy(X.T), V).double()  # (T, B, V)
    out, h_T_ref = m(x, torch.from_numpy(h0))
    logits = out @ W_hy + b_y  # (T, B, V)
    loss_ref = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(Y.T).reshape(-1))
    loss_ref.backward()
    assert_head_grads(grads, loss, W_hy, b_y, loss_ref)
    assert rel_error(h_T, h_T_ref) <= 1e-12
    assert_layer_grads(grads["layers"], m, "rnn")


@pytest.mark.parametrize("script,cell", [("lstm", "lstm"), ("lstm", "rnn"), ("gru", "gru"), ("gru", "rnn")])
def test_gated_loss_and_grads_equal_autograd(load_script, script, cell):
    """lstm_numpy's and gru_numpy's `loss_and_grads` end to end: 2 layers from a zero state, the head on the
    top layer's last output only, the mean cross-entropy; the loss, the logits and every parameter's
    gradient against torch's module + the same head under autograd, float64."""
    mod = load_script(f"05-rnns/{script}_numpy.py")
    rng = np.random.default_rng(21)
    K = 4
    params = {"layers": random_layers(rng, cell), **head(rng, H, K)}
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, K, B)
    loss, grads, logits = mod.loss_and_grads(params, x, y, cell)

    m = torch_twin(params["layers"], cell)
    W_hy, b_y = (torch.tensor(params[k], requires_grad=True) for k in ("W_hy", "b_y"))
    out, _ = m(torch.from_numpy(x))
    logits_ref = out[-1] @ W_hy + b_y  # (B, K)
    loss_ref = torch.nn.functional.cross_entropy(logits_ref, torch.from_numpy(y))
    loss_ref.backward()
    assert rel_error(logits, logits_ref) <= 1e-12
    assert_head_grads(grads, loss, W_hy, b_y, loss_ref)
    assert_layer_grads(grads["layers"], m, cell)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_birnn_loss_and_grads_equal_autograd(load_script, bidirectional):
    """birnn_numpy's `loss_and_grads` end to end: 2 (bi)directional layers, the per-position head on [hf | hb],
    the mean cross-entropy over T*B positions; loss, predictions and every gradient against autograd."""
    mod = load_script("05-rnns/birnn_numpy.py")
    rng = np.random.default_rng(22)
    dirs = 2 if bidirectional else 1
    layers = random_layers(rng, "rnn", bidirectional=bidirectional)
    layers = layers if bidirectional else [[p] for p in layers]  # birnn_numpy's layout: a list of directions
    params = {"layers": layers, **head(rng, dirs * H, 2)}
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, 2, (T, B))
    loss, grads, pred = mod.loss_and_grads(params, x, y)

    m = torch_twin(layers, "rnn", bidirectional=True) if bidirectional else torch_twin([p[0] for p in layers], "rnn")
    W_hy, b_y = (torch.tensor(params[k], requires_grad=True) for k in ("W_hy", "b_y"))
    out, _ = m(torch.from_numpy(x))
    logits = out @ W_hy + b_y  # (T, B, 2)
    loss_ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), torch.from_numpy(y).reshape(-1))
    loss_ref.backward()
    assert np.array_equal(pred, logits.argmax(dim=2).numpy())
    assert_head_grads(grads, loss, W_hy, b_y, loss_ref)
    if bidirectional:
        assert_layer_grads(grads["layers"], m, "rnn", bidirectional=True)
    else:
        assert_layer_grads([g[0] for g in grads["layers"]], m, "rnn")


# --- Adam written inside each script against torch.optim.Adam ---------------------------------


@pytest.mark.parametrize("script", ["rnn", "lstm", "gru", "birnn"])
def test_adam_step_follows_torch_adam(load_script, script):
    """100 steps of the script's `adam_step` on three float64 tensors (one with gradients small enough
    that eps matters), non-default betas and eps, beside torch.optim.Adam fed the same gradients: the
    parameters agree to 1e-10 after every step."""
    check_adam_step(load_script(f"05-rnns/{script}_numpy.py").adam_step)
