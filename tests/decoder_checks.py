"""Checks that every causal decoder of 06-transformers must pass (gpt2_torch.py's GPT, llama_torch.py's Llama).

Each takes models built by the test (a tiny config, float64) whose forward is model(idx, targets=None,
cache=None) -> (logits, loss) and whose generate(idx, n, temperature, ..., use_cache) samples.
"""

import torch


def redraw(model, gains, std=0.2, seed=0):
    """Every parameter redrawn from N(0, std^2), the norm gains (names ending in `gains`) around 1: no layer is
    near an identity, so a wrong nonlinearity or a wrong layout shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std
            p.copy_(1 + noise if name.endswith(gains) else noise)
    return model


def cached_steps(model, idx, cache, chunks):
    """The logits of idx fed through the cache in pieces: the first `chunks` boundaries, then one token at a time."""
    bounds = [0, *chunks, *range(chunks[-1] + 1, idx.size(1) + 1)]
    with torch.no_grad():
        return torch.cat([model(idx[:, a:b], cache=cache)[0] for a, b in zip(bounds, bounds[1:])], dim=1)


def assert_generation_is_recomputation(model, vocab, window):
    """Greedy: the same tokens with and without the cache, also once the window slides past `window` positions,
    and each token the argmax of a full recomputation on the last `window` tokens."""
    idx = torch.randint(0, vocab, (2, 3))
    a = model.generate(idx, 30, temperature=0, use_cache=True)
    b = model.generate(idx, 30, temperature=0, use_cache=False)
    assert a.shape == (2, 33) and torch.equal(a, b)
    with torch.no_grad():
        for t in range(3, 33):
            assert a[0, t] == model(a[:1, max(0, t - window) : t])[0][0, -1].argmax()


def assert_sdpa_is_hand_written(hand, fast, vocab):
    """The same weights in a model with the hand-written attention and one with SDPA: equal loss and gradients."""
    fast.load_state_dict(hand.state_dict())
    idx = torch.randint(0, vocab, (3, 16))
    la, lb = hand(idx, idx)[1], fast(idx, idx)[1]
    la.backward(), lb.backward()
    assert abs(la.item() - lb.item()) < 1e-12
    for (name, p), q in zip(hand.named_parameters(), fast.parameters()):
        assert (p.grad - q.grad).abs().max().item() < 1e-10, name


def assert_causal(model, vocab):
    """Changing tokens 9.. changes no logit before position 9, and does change the ones after."""
    idx = torch.randint(0, vocab, (1, 16))
    other = idx.clone()
    other[0, 9:] = (other[0, 9:] + 1) % vocab
    with torch.no_grad():
        a, b = model(idx)[0], model(other)[0]
    assert torch.equal(a[0, :9], b[0, :9])
    assert (a[0, 9:] - b[0, 9:]).abs().max() > 1e-3
