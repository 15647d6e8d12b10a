"""Helpers shared by the hypothesis tests of the 04-cnns layers (pooling, transposed convolution)."""


def as_arg(h, w, use_int):
    """An int where the pair is square and use_int says so, else the pair: both forms get exercised."""
    return h if use_int and h == w else (h, w)
