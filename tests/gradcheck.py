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
