"""Helpers shared by the gradient tests: the relative error we hold gradients to, and autograd's answer.

Relative error max|a - b| / max(max|a| + max|b|, 1e-12) is the project's bar (1e-7 for hand-written
gradients in float64). `torch_vjp` gives what autograd computes for a random upstream gradient,
which, unlike an all-ones upstream, cannot hide a mistake that sums to zero.
"""

import numpy as np
import torch


def rel_error(a, b):
    """max|a - b| / max(max|a| + max|b|, 1e-12), for arrays or tensors of the same shape."""
    a, b = (np.asarray(t.detach() if isinstance(t, torch.Tensor) else t, dtype=np.float64) for t in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.abs(a - b).max() / max(np.abs(a).max() + np.abs(b).max(), 1e-12)


def torch_vjp(fn, inputs, upstream):
    """Output of fn(*inputs) and the gradients of sum(output * upstream) w.r.t. every input, by autograd."""
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in inputs]
    out = fn(*ts)
    grads = torch.autograd.grad(out, ts, grad_outputs=torch.as_tensor(upstream, dtype=torch.float64))
    return out.detach().numpy(), [g.numpy() for g in grads]


def check_adam_step(adam_step, seed=23, steps=100):
    """A script's in-place ``adam_step(params, grads, state, lr, betas=, eps=)`` on flat dicts of float64 arrays
    follows torch.optim.Adam fed the same gradients: three tensors (one with gradients small enough that eps
    matters), non-default betas and eps, parameters equal to 1e-10 after every step."""
    rng = np.random.default_rng(seed)
    params = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(5), "c": rng.standard_normal((2, 2, 2))}
    scale = {"W": 1.0, "b": 3.0, "c": 1e-6}
    ref = [torch.tensor(v, requires_grad=True) for v in params.values()]
    lr, betas, eps = 0.03, (0.8, 0.99), 1e-6
    opt, state = torch.optim.Adam(ref, lr=lr, betas=betas, eps=eps), {}
    for step in range(steps):
        # gradients that depend on where the parameters are, so any difference would grow along the way
        grads = {
            k: scale[k] * (np.sin(3 * v) + 0.5 * v + 0.3 * rng.standard_normal(v.shape)) for k, v in params.items()
        }
        for t, g in zip(ref, grads.values()):
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        adam_step(params, grads, state, lr, betas=betas, eps=eps)
        for (k, v), t in zip(params.items(), ref):
            assert rel_error(v, t) <= 1e-10, (step, k)
