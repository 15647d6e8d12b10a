"""05-rnns: the from-scratch RNN, LSTM, GRU and bidirectional LSTM modules against torch.nn's, and the scripts' runs.

Every comparison is in float64 with the weights copied across (`copy_from`) and random, non-uniform
upstream gradients on the output and on every final state: outputs, final states and the gradients of
the input, the initial state and every parameter must agree to 1e-10.
"""

import json
import math

import pytest
import torch
from gradcheck import rel_error
from torch import nn

TOL = 1e-10
SCRIPTS = {
    "RNN": "05-rnns/rnn_torch.py",
    "LSTM": "05-rnns/lstm_torch.py",
    "GRU": "05-rnns/gru_torch.py",
    "BiLSTM": "05-rnns/birnn_torch.py",
}
TORCH_CLASS = {"RNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU, "BiLSTM": nn.LSTM}


@pytest.fixture(scope="module")
def mods(load_script):
    return {kind: load_script(path) for kind, path in SCRIPTS.items()}


def make_pair(mods, kind, D, H, L, dropout=0.0, bidirectional=True, seed=0):
    """(mine, torch's) in float64, mine with torch's weights copied across."""
    torch.manual_seed(seed)
    if kind == "BiLSTM":
        ref = nn.LSTM(D, H, L, dropout=dropout, bidirectional=bidirectional).double()
        mine = mods[kind].BiLSTM(D, H, L, dropout, bidirectional=bidirectional).double()
    else:
        ref = TORCH_CLASS[kind](D, H, L, dropout=dropout).double()
        mine = getattr(mods[kind], kind)(D, H, L, dropout).double()
    return mine.copy_from(ref), ref


def n_states(kind, L, bidirectional):
    return L * (2 if kind == "BiLSTM" and bidirectional else 1)


def random_state(kind, S, B, H, gen):
    """An initial state: h0, or (h0, c0) for the LSTMs, each (S, B, H)."""
    draw = lambda: torch.randn(S, B, H, generator=gen, dtype=torch.float64)  # noqa: E731
    return (draw(), draw()) if "LSTM" in kind else draw()


def as_list(state):
    return list(state) if isinstance(state, tuple) else [state]


def forward_backward(module, x, state, upstreams):
    """Output, final states, and the gradients of sum_k <out_k, upstream_k> w.r.t. x, initial state, parameters."""
    x = x.clone().requires_grad_(True)
    leaves = [x]
    if state is not None:
        state = tuple(s.clone().requires_grad_(True) for s in as_list(state))
        leaves += list(state)
        state = state if len(state) == 2 else state[0]
    out, final = module(x, state)
    results = [out, *as_list(final)]
    names = [name for name, _ in module.named_parameters()]
    total = sum((r * u).sum() for r, u in zip(results, upstreams))
    grads = torch.autograd.grad(total, leaves + [dict(module.named_parameters())[n] for n in names])
    return [r.detach() for r in results], dict(zip(["x", "state0", "state1"][: len(leaves)] + names, grads))


def assert_same(mods, kind, T, B, D, H, L, with_state, bidirectional=True, dropout=0.0, train=True):
    mine, ref = make_pair(mods, kind, D, H, L, dropout, bidirectional)
    mine.train(train), ref.train(train)
    gen = torch.Generator().manual_seed(1)
    S = n_states(kind, L, bidirectional)
    x = torch.randn(T, B, D, generator=gen, dtype=torch.float64)
    state = random_state(kind, S, B, H, gen) if with_state else None
    out_dim = H * (2 if kind == "BiLSTM" and bidirectional else 1)
    shapes = [(T, B, out_dim)] + [(S, B, H)] * (2 if "LSTM" in kind else 1)
    upstreams = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    results, grads = forward_backward(mine, x, state, upstreams)
    results_ref, grads_ref = forward_backward(ref, x, state, upstreams)
    for r, r_ref, shape in zip(results, results_ref, shapes):
        assert tuple(r.shape) == shape
        assert rel_error(r, r_ref) <= TOL
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert rel_error(grads[name], grads_ref[name]) <= TOL, name


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("L,with_state", [(1, False), (2, True), (3, False), (3, True)])
def test_cell_matches_torch(mods, kind, L, with_state):
    """Outputs, final states and all gradients over 7 steps, batch 3, with and without an initial state."""
    assert_same(mods, kind, T=7, B=3, D=5, H=4, L=L, with_state=with_state)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("L,with_state", [(1, True), (2, False), (3, True)])
def test_bilstm_matches_torch(mods, L, with_state, bidirectional):
    """The bidirectional LSTM (and its unidirectional twin) against nn.LSTM(bidirectional=...)."""
    assert_same(mods, "BiLSTM", T=6, B=4, D=5, H=3, L=L, with_state=with_state, bidirectional=bidirectional)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "BiLSTM"])
def test_eval_mode_with_dropout_matches_torch(mods, kind):
    """Both in eval mode with the same dropout value: no dropout, identical results."""
    assert_same(mods, kind, T=5, B=2, D=3, H=4, L=2, with_state=True, dropout=0.4, train=False)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "BiLSTM"])
def test_dropout_only_between_layers_in_training(mods, kind):
    """In training the bottom layer is untouched (its final state equals eval mode's), the top layer is not."""
    mine, _ = make_pair(mods, kind, D=3, H=8, L=2, dropout=0.5)
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    torch.manual_seed(0)
    out_train, state_train = mine.train()(x)
    out_eval, state_eval = mine.eval()(x)
    h_train, h_eval = as_list(state_train)[0], as_list(state_eval)[0]
    bottom = 2 if kind == "BiLSTM" else 1  # the bottom layer's entries of h_n (both directions for BiLSTM)
    assert rel_error(h_train[:bottom], h_eval[:bottom]) <= TOL
    assert rel_error(out_train, out_eval) > 1e-3
    single = getattr(mods[kind], kind)(3, 8, 1, 0.5).double()  # one layer: nothing to drop between
    assert rel_error(single.train()(x)[0], single.eval()(x)[0]) == 0


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_state_carries_across_chunks(mods, kind):
    """Reading a sequence in two chunks with the state carried over equals reading it whole (what TBPTT relies on)."""
    mine, _ = make_pair(mods, kind, D=3, H=4, L=2)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    out, state = mine(x)
    out_a, state_a = mine(x[:4])
    out_b, state_b = mine(x[4:], state_a)
    assert rel_error(torch.cat([out_a, out_b]), out) <= TOL
    for s, s_ref in zip(as_list(state_b), as_list(state)):
        assert rel_error(s, s_ref) <= TOL


@pytest.mark.parametrize(
    "kind,bidirectional", [("RNN", True), ("LSTM", True), ("GRU", True), ("BiLSTM", True), ("BiLSTM", False)]
)
def test_state_dict_interchangeable_and_init(mods, kind, bidirectional):
    """Same keys and shapes as torch's; torch's module loads ours and then computes what ours does; init bounds."""
    mine, ref = make_pair(mods, kind, D=5, H=6, L=3, bidirectional=bidirectional, seed=3)
    fresh = make_pair(mods, kind, D=5, H=6, L=3, bidirectional=bidirectional, seed=4)[1]
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert list(mine.state_dict()) == list(ref.state_dict())
    # a freshly initialised module of ours: torch's default U(-1/sqrt(H), 1/sqrt(H)) for every parameter
    ours = getattr(mods[kind], kind)(5, 6, 3, 0.0, *([bidirectional] if kind == "BiLSTM" else []))
    values = torch.cat([q.detach().flatten() for q in ours.parameters()])
    assert (
        values.abs().max() <= 1 / math.sqrt(6)
        and values.min() < -0.9 / math.sqrt(6) < 0.9 / math.sqrt(6) < values.max()
    )
    fresh.load_state_dict(ours.double().state_dict())
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    assert rel_error(fresh(x)[0], ours(x)[0]) <= TOL


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "BiLSTM"])
def test_bad_arguments_raise(mods, kind):
    cls = getattr(mods[kind], kind)
    for args in [(0, 4), (3, 0), (3, 4, 0), (3, 4, 1, 1.5), (3, 4, 1, -0.1), (3.0, 4), (3, 4, "2")]:
        with pytest.raises(ValueError):
            cls(*args)
    module = cls(3, 4, 2).double()
    for x in [
        torch.zeros(5, 3, dtype=torch.float64),
        torch.zeros(5, 2, 4, dtype=torch.float64),
        torch.zeros(0, 2, 3, dtype=torch.float64),
    ]:
        with pytest.raises(ValueError):
            module(x)
    S = 4 if kind == "BiLSTM" else 2
    bad = torch.zeros(S, 3, 4, dtype=torch.float64)  # batch 3 for an input of batch 2
    with pytest.raises(ValueError):
        module(torch.zeros(5, 2, 3, dtype=torch.float64), (bad, bad) if "LSTM" in kind else bad)
    wrong = [
        nn.GRU(3, 4, 2) if kind != "GRU" else nn.LSTM(3, 4, 2),
        TORCH_CLASS[kind](3, 5, 2),
        TORCH_CLASS[kind](3, 4, 3),
        TORCH_CLASS[kind](3, 4, 2, bidirectional=kind != "BiLSTM"),
    ]
    for ref in wrong:
        with pytest.raises(ValueError):
            module.copy_from(ref)


# --- the scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_language_model_smoke(mods, kind, tmp_path):
    """A real two-epoch run on 60k characters of Tiny Shakespeare: perplexity far below |V| (60), and falling."""
    m = mods[kind].main(["--smoke", "--out-dir", str(tmp_path)])
    V = m["vocab_size"]
    assert 50 < V < 70
    assert m["val_ppl"] < V / 5 and m["train_ppl"] < V / 4  # a unigram model's is about 26
    assert m["history"]["val_ppl"][-1] < m["history"]["val_ppl"][0]
    assert m["sample"].startswith("ROMEO:\n") and len(m["sample"]) >= len("ROMEO:\n") + 300
    assert json.loads((tmp_path / "metrics.json").read_text())["val_ppl"] == m["val_ppl"]
    for name in ["perplexity.png", "samples.txt", "checkpoint.pt"]:
        assert (tmp_path / name).stat().st_size > 0


def test_resume_continues_exactly(mods, tmp_path):
    """Two epochs in one go equal one epoch, a stop, and a resumed second epoch: the same numbers."""
    rnn = mods["RNN"]
    flags = ["--smoke", "--steps-per-epoch", "15", "--sample-len", "50"]
    whole = rnn.main([*flags, "--epochs", "2", "--out-dir", str(tmp_path / "whole")])
    first = rnn.main([*flags, "--epochs", "1", "--out-dir", str(tmp_path / "parts")])
    resumed = rnn.main([*flags, "--epochs", "2", "--resume", "--out-dir", str(tmp_path / "parts")])
    assert len(first["history"]["val_ppl"]) == 1
    assert resumed["history"] == whole["history"]
    assert resumed["sample"] == whole["sample"]
    with pytest.raises(SystemExit) as exc:  # nothing to resume
        rnn.main([*flags, "--resume", "--out-dir", str(tmp_path / "empty")])
    assert exc.value.code == 2


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "BiLSTM"])
def test_bad_flags_exit_2(mods, kind, tmp_path, capsys, monkeypatch):
    """Bad values exit 2 naming the flag (lstm_torch once answered --lr nan with a traceback), and so does a
    device this machine lacks, before any data is read."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        ["--hidden-size", "0"],
        ["--dropout", "1"],
        ["--lr", "-1"],
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr", "0"],
        ["--batch-size", "0"],
        ["--epochs", "0"],
        ["--layers", "0"],
        ["--clip", "-1"],
    ]
    if kind != "BiLSTM":
        cases += [
            ["--corpus", "ptb"],
            ["--seq-len", "0"],
            ["--embed-dim", "0"],
            ["--steps-per-epoch", "0"],
            ["--top-k", "-1"],
            ["--temperature", "0"],
        ]
    for argv in cases:
        with pytest.raises(SystemExit) as exc:
            mods[kind].main([*argv, "--smoke", "--out-dir", str(tmp_path)])
        assert exc.value.code == 2, argv
        assert argv[0] in capsys.readouterr().err, argv
    load = "load_data" if kind == "BiLSTM" else "load_corpus"
    monkeypatch.setattr(mods[kind], load, lambda *a, **k: pytest.fail("data loaded before the device was checked"))
    with pytest.raises(SystemExit) as exc:
        mods[kind].main(["--device", "cuda", "--smoke", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "--device cuda: not available on this machine" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "BiLSTM"])
def test_missing_data_is_a_one_line_error(mods, kind, missing_data_error):
    """No corpus anywhere (an empty ARC_DATA_DIR and download cache, no network): `error: ...` naming
    ARC_DATA_DIR, as SystemExit, not a DataError traceback."""
    missing_data_error(mods[kind].main)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_ctrl_c_and_resume_with_other_settings(mods, kind, tmp_path, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) in epoch 2: exit 130, no traceback, the checkpoint's path and the command
    that resumes; a resume with other settings: exit 2 in one line naming each differing flag with both
    values, the checkpoint untouched; the printed command then finishes the run."""
    mod = mods[kind]
    out = tmp_path / "run"
    argv = ["--smoke", "--epochs", "2", "--steps-per-epoch", "2", "--sample-len", "5", "--out-dir", str(out)]
    real_stream, calls = mod.batch_stream, []

    def interrupted_stream(*args, **kwargs):  # epoch k asks for its batches once: Ctrl-C as epoch 2 starts
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(mod, "batch_stream", interrupted_stream)
    interrupt_at = 1  # before anything is saved: no checkpoint, so the command starts again
    with pytest.raises(SystemExit) as exc:
        mod.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "nothing saved" in err and "--resume" not in err and "Traceback" not in err
    calls.clear()
    interrupt_at = 2
    with pytest.raises(SystemExit) as exc:
        mod.main(argv)
    err = capsys.readouterr().err
    ckpt = out / "checkpoint.pt"
    assert exc.value.code == 130 and "Traceback" not in err
    assert f"{ckpt} holds epoch 1" in err
    command = err.strip().splitlines()[-1].split()
    assert command[:2] == ["python", f"05-rnns/{SCRIPTS[kind].split('/')[1]}"] and command[-1] == "--resume"
    assert command[2:-1] == argv

    saved = ckpt.read_bytes()
    with pytest.raises(SystemExit) as exc:
        mod.main([*argv, "--resume", "--hidden-size", "32", "--seed", "5"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--hidden-size 64 -> 32" in err and "--seed 0 -> 5" in err and str(ckpt) in err
    assert "--epochs" not in err  # a resume may run longer
    assert ckpt.read_bytes() == saved

    monkeypatch.setattr(mod, "batch_stream", real_stream)
    m = mod.main(command[2:])  # the printed command finishes the run
    assert len(m["history"]["val_ppl"]) == 2


def test_birnn_smoke(mods, tmp_path):
    """2k Fashion-MNIST images, one epoch, both nets: well above chance (0.1)."""
    m = mods["BiLSTM"].main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["test_acc"] > 0.5 and m["test_acc_unidirectional"] > 0.4
    assert m["final_train_loss"] < m["first_loss"]
    assert m["params"] > m["params_unidirectional"]
    for name in ["metrics.json", "learning_curves.png", "checkpoint.pt"]:
        assert (tmp_path / name).stat().st_size > 0
