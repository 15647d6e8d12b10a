"""Tests of the two translation scripts, 05-rnns/seq2seq_torch.py and 06-transformers/bahdanau_torch.py.

Each script carries its own copy of BLEU, the masked loss and the two searches (scripts do not
import each other), so most tests run on both: corpus BLEU against sacreBLEU, d2l's sentence BLEU on
its printed examples, padding that changes nothing, beam search against greedy search and against
the model's own log-probabilities, d2l 10.8's example where beam search beats greedy search, and a
smoke run on the real corpus followed by ``--translate``.
"""

import math
import re

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from smoke import check_translate_refusals
from torch import nn

SCRIPTS = {"seq2seq": "05-rnns/seq2seq_torch.py", "bahdanau": "06-transformers/bahdanau_torch.py"}
MODELS = {"seq2seq": "Seq2Seq", "bahdanau": "Seq2SeqAttention"}


@pytest.fixture(params=list(SCRIPTS), scope="module")
def script(request, load_script):
    """(name, module) of each translation script."""
    return request.param, load_script(SCRIPTS[request.param])


def tiny_model(script, seed=0, vocab=9):
    """A small model of the script at random weights (dropout off)."""
    name, m = script
    torch.manual_seed(seed)
    return getattr(m, MODELS[name])(vocab, vocab, 8, 16, 2, 0.0).eval()


_TRAINED = {}


def trained_tiny(script):
    """A small model trained for a few seconds to write its source backwards (once per process): its
    outputs depend on the source and it stops at varied lengths, unlike a model at random weights."""
    name, m = script
    if name not in _TRAINED:
        model = tiny_model(script).train()
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        for step in range(150):
            seqs, src, src_len = random_sources(32, seed=100 + step)
            label = [torch.cat([s[:-1].flip(0), s[-1:]]) for s in seqs]  # words reversed, then <eos>
            y, y_len = pad_batch(label)
            dec_in = torch.cat([torch.full((len(seqs), 1), 2), y[:, :-1]], dim=1)  # <bos> = 2
            loss = m.masked_loss(model(src, src_len, dec_in), y, y_len)
            opt.zero_grad()
            loss.backward()
            opt.step()
        _TRAINED[name] = model.eval()
    return _TRAINED[name]


def pad_batch(seqs):
    """A list of 1-D id tensors -> (B, max len) padded with PAD = 1, and the lengths."""
    lens = torch.tensor([len(s) for s in seqs])
    batch = torch.full((len(seqs), int(lens.max())), 1)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    return batch, lens


def random_sources(n, vocab=9, seed=0):
    """n source sentences of 1-6 real words (ids 4 .. vocab-1) each ending with EOS = 3, and a padded batch."""
    rng = np.random.default_rng(seed)
    seqs = [torch.tensor([*rng.integers(4, vocab, rng.integers(1, 7)), 3]) for _ in range(n)]
    return seqs, *pad_batch(seqs)


# %% BLEU


def random_corpus(rng, n, vocab, max_len, empty_share=0.1):
    """n (hypothesis, reference) token lists over a small vocabulary, some hypotheses empty."""
    hyps, refs = [], []
    for _ in range(n):
        hyps.append(
            [] if rng.random() < empty_share else [f"w{t}" for t in rng.integers(0, vocab, rng.integers(1, max_len))]
        )
        refs.append([f"w{t}" for t in rng.integers(0, vocab, rng.integers(1, max_len))])
    return hyps, refs


def sacre(hyps, refs, smooth):
    joined = [" ".join(h) for h in hyps], [[" ".join(r) for r in refs]]
    return sacrebleu.corpus_bleu(*joined, tokenize="none", smooth_method=smooth).score


@pytest.mark.parametrize("smooth", ["exp", "none"])
def test_corpus_bleu_equals_sacrebleu(script, smooth):
    """On 300 random corpora (1-30 sentences, vocabularies of 3-12 words so that n-grams match often,
    sometimes never; empty hypotheses included) corpus_bleu equals sacreBLEU's corpus_bleu with
    tokenize="none" on the whitespace-joined tokens, with its default exp smoothing and without."""
    _, m = script
    rng = np.random.default_rng(1)
    zero = 0
    for _ in range(300):
        hyps, refs = random_corpus(rng, int(rng.integers(1, 30)), int(rng.integers(3, 13)), int(rng.integers(2, 12)))
        ours = m.corpus_bleu(hyps, refs, max_n=4, smooth=smooth)
        assert ours == pytest.approx(sacre(hyps, refs, smooth), abs=1e-9), (hyps, refs)
        zero += ours == 0
    assert 0 < zero < 300  # both regimes were exercised


def test_corpus_bleu_edge_cases(script):
    """All hypotheses empty: 0; no n-gram in common: 0; a perfect corpus: 100; a short but exact
    hypothesis: the brevity penalty alone; each equal to sacreBLEU."""
    _, m = script
    refs = [["le", "chat", "dort", "."], ["il", "pleut", "beaucoup", "ici", "."]]
    cases = {
        "empty": ([[], []], 0.0),
        "disjoint": ([["a", "b", "c", "d"], ["e", "f", "g", "h", "i"]], 0.0),
        "perfect": (refs, 100.0),
        "short": ([["le", "chat", "dort", "."], ["il", "pleut", "beaucoup", "ici"]], None),
    }
    for hyps, expected in cases.values():
        ours = m.corpus_bleu(hyps, refs)
        assert ours == pytest.approx(sacre(hyps, refs, "exp"), abs=1e-9)
        if expected is not None:
            assert ours == pytest.approx(expected)
    # the short case by hand: 8 tokens for 9: BP = exp(1 - 9/8); precisions 8/8, 6/6, 4/4, 2/2
    assert m.corpus_bleu(*[cases["short"][0], refs]) == pytest.approx(100 * math.exp(1 - 9 / 8))
    with pytest.raises(ValueError, match="references"):
        m.corpus_bleu([["a"]], [])


@pytest.mark.parametrize(
    "pred, label, expected",
    [
        ("va !", "va !", 1.0),
        ("j'ai perdu .", "j'ai perdu .", 1.0),
        ("il est malade .", "il est calme .", 0.658),  # p1 = 3/4, p2 = 1/3: (3/4)^(1/2) (1/3)^(1/4)
        ("je suis chez moi <unk> .", "je suis chez moi .", 0.803),  # p1 = 5/6, p2 = 3/5, no brevity penalty
        ("nous <unk> .", "il est calme .", 0.0),  # no bigram in common
        ("il", "il est calme .", 0.0),  # no bigram at all
    ],
)
def test_bleu_d2l_on_its_printed_examples(script, pred, label, expected):
    """d2l's sentence BLEU (k = 2) on the references of d2l's four examples (go . / i lost . / he's calm . /
    i'm home .) and predictions of the kind the book prints; each expected value is worked out by hand."""
    _, m = script
    assert round(m.bleu_d2l(pred.split(), label.split(), k=2), 3) == expected


def test_bleu_d2l_brevity_penalty(script):
    """A prefix of the label: every precision is 1, the score is the brevity penalty exp(1 - 4/3)."""
    _, m = script
    assert m.bleu_d2l("a b c".split(), "a b c d".split()) == pytest.approx(math.exp(1 - 4 / 3))


# %% the masked loss and padding


def test_masked_loss_ignores_padding(script):
    """Changing logits and labels at padded positions changes neither the loss nor the gradient; the
    loss is the mean cross-entropy over the real tokens; padded positions get a zero gradient."""
    _, m = script
    torch.manual_seed(0)
    B, T, V = 4, 6, 7
    label_len = torch.tensor([6, 3, 1, 4])
    pad = torch.arange(T)[None, :] >= label_len[:, None]  # (B, T)
    logits = torch.randn(B, T, V, dtype=torch.float64)
    label = torch.randint(0, V, (B, T))
    losses, grads = [], []
    for trial in range(2):
        x = logits.clone()
        y = label.clone()
        if trial:  # new values where it must not matter
            x[pad] = torch.randn(int(pad.sum()), V, dtype=torch.float64) * 10
            y[pad] = torch.randint(0, V, (int(pad.sum()),))
        x.requires_grad_(True)
        loss = m.masked_loss(x, y, label_len)
        loss.backward()
        losses.append(loss.item())
        grads.append(x.grad)
    assert losses[0] == pytest.approx(losses[1], abs=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)
    assert grads[0][pad].abs().max() == 0
    by_hand = np.mean(
        [F.cross_entropy(logits[b, t], label[b, t]).item() for b in range(B) for t in range(int(label_len[b]))]
    )
    assert losses[0] == pytest.approx(by_hand, abs=1e-12)


def test_model_ignores_padding(script):
    """The whole model: other tokens in the source's padding and in the target's padding give the same
    loss and the same gradient of every parameter (packing in the encoder, masks in the loss and, with
    attention, in the softmax)."""
    model = tiny_model(script).double()
    _, m = script
    _, src, src_len = random_sources(5, seed=1)
    label_len = torch.tensor([3, 5, 1, 4, 2])
    T = 5
    rng = torch.Generator().manual_seed(2)
    label = torch.randint(4, 9, (5, T), generator=rng)
    dec_in = torch.cat([torch.full((5, 1), 2), label[:, :-1]], dim=1)
    results = []
    for trial in range(2):
        s, d, y = src.clone(), dec_in.clone(), label.clone()
        if trial:
            src_pad = torch.arange(s.shape[1])[None, :] >= src_len[:, None]
            s[src_pad] = torch.randint(4, 9, (int(src_pad.sum()),), generator=rng)
            tgt_pad = torch.arange(T)[None, :] >= label_len[:, None]
            d[tgt_pad] = 7  # decoder inputs at padded positions only feed predictions the loss ignores
            y[tgt_pad] = torch.randint(4, 9, (int(tgt_pad.sum()),), generator=rng)
        model.zero_grad()
        loss = m.masked_loss(model(s, src_len, d), y, label_len)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-12)
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1, rtol=0, atol=1e-12)


def test_encoder_state_stops_at_the_last_word(script):
    """The encoder's final state of a padded batch equals that of each sentence encoded alone."""
    model = tiny_model(script).double()
    seqs, src, src_len = random_sources(6, seed=3)
    outputs, state = model.encoder(src, src_len)
    for i, s in enumerate(seqs):
        out_i, state_i = model.encoder(s[None], torch.tensor([len(s)]))
        torch.testing.assert_close(state[:, i], state_i[:, 0])
        torch.testing.assert_close(outputs[i, : len(s)], out_i[0])
        assert outputs[i, len(s) :].abs().sum() == 0


def test_context_is_fed_at_every_step(load_script):
    """d2l 10.7: the seq2seq decoder reads the context c at every step, not only through its first
    state: with the same state and inputs, another c changes the output of every step."""
    m = load_script(SCRIPTS["seq2seq"])
    model = tiny_model(("seq2seq", m))
    _, src, src_len = random_sources(3, seed=8)
    state, (c,) = model.start(src, src_len)
    y = torch.randint(4, 9, (3, 5))
    logits, _ = model.decoder(y, state, c)
    other, _ = model.decoder(y, state, c + 1)
    assert ((logits - other).abs().amax(dim=-1) > 1e-4).all()  # (B, T): every sentence, every step
    torch.testing.assert_close(c, state[-1])  # c is the top layer's final state


def test_reverse_source(load_script):
    """Sutskever's trick reverses the real words and leaves <eos> and the padding where they are."""
    m = load_script(SCRIPTS["seq2seq"])
    src = torch.tensor([[5, 6, 7, 3, 1], [8, 3, 1, 1, 1], [4, 5, 6, 7, 3]])
    out = m.reverse_source(src, torch.tensor([4, 2, 5]))
    assert out.tolist() == [[7, 6, 5, 3, 1], [8, 3, 1, 1, 1], [7, 6, 5, 4, 3]]


# %% attention (Bahdanau)


def test_attention_weights_sum_to_one_over_real_words(load_script):
    """alpha_tj: non-negative, summing to 1 over j < src_len, exactly 0 beyond; and equal to
    softmax_j(v^T tanh(W_s s + W_h h_j)) over the valid positions, computed row by row."""
    m = load_script(SCRIPTS["bahdanau"])
    torch.manual_seed(0)
    att = m.AdditiveAttention(5, 4).double()
    B, S = 4, 6
    s, h = torch.randn(B, 5, dtype=torch.float64), torch.randn(B, S, 5, dtype=torch.float64)
    src_len = torch.tensor([6, 1, 3, 4])
    c, w = att(s, att.W_h(h), h, src_len)
    for b in range(B):
        n = int(src_len[b])
        assert w[b, :n].sum().item() == pytest.approx(1, abs=1e-12) and (w[b, :n] > 0).all()
        assert (w[b, n:] == 0).all()
        scores = torch.stack(
            [att.v.weight[0] @ torch.tanh(att.W_s.weight @ s[b] + att.W_h.weight @ h[b, j]) for j in range(n)]
        )
        torch.testing.assert_close(w[b, :n], F.softmax(scores, dim=0))
        torch.testing.assert_close(c[b], (w[b, :n, None] * h[b, :n]).sum(0))


def test_attention_query_is_the_top_layer_state(load_script):
    """The first step attends with s_0 = the encoder's final state of the top layer (d2l 11.4)."""
    m = load_script(SCRIPTS["bahdanau"])
    model = tiny_model(("bahdanau", m))
    _, src, src_len = random_sources(4, seed=9)
    state, (outputs, keys, _) = model.start(src, src_len)
    _, w = model(src, src_len, torch.full((4, 1), 2), return_weights=True)  # one step from <bos>
    _, expected = model.decoder.attention(state[-1], model.decoder.attention.W_h(outputs), outputs, src_len)
    torch.testing.assert_close(w[:, 0], expected)
    torch.testing.assert_close(keys, model.decoder.attention.W_h(outputs))


def test_decoder_weights_through_the_model(load_script):
    """The weights the decoder returns for a padded batch: one row per output step, each a distribution
    over that sentence's real words only."""
    m = load_script(SCRIPTS["bahdanau"])
    model = tiny_model(("bahdanau", m))
    _, src, src_len = random_sources(5, seed=4)
    dec_in = torch.randint(4, 9, (5, 4))
    _, w = model(src, src_len, dec_in, return_weights=True)
    assert w.shape == (5, 4, src.shape[1])
    valid = torch.arange(src.shape[1])[None, None, :] < src_len[:, None, None]
    torch.testing.assert_close(w.sum(-1), torch.ones(5, 4))
    assert (w[~valid.expand_as(w)] == 0).all()


# %% searches


def sequence_log_prob(model, src, ids):
    """sum_t log p(ids_t | ids_<t, src), by teacher forcing the ids through the model in one call."""
    dec_in = torch.tensor([[2, *ids[:-1]]])  # BOS = 2
    with torch.no_grad():
        logp = F.log_softmax(model(src[None], torch.tensor([len(src)]), dec_in), dim=-1)[0]  # (T, V)
    return logp[torch.arange(len(ids)), torch.tensor(ids)].sum().item()


def test_beam_one_is_greedy(script):
    """Beam size 1 returns exactly greedy search's output, sentence by sentence: greedy search runs
    batched and padded, beam search on one unpadded sentence. Two models: the small trained one, whose
    sentences end with <eos> at varied lengths, and one at random weights, whose sentences never end."""
    _, m = script
    seqs, src, src_len = random_sources(40, seed=7)
    for model, ended in [(trained_tiny(script), True), (tiny_model(script, seed=1), False)]:
        greedy = m.greedy_search(model, src, src_len, max_len=8)
        assert all((g[-1] == 3) == ended for g in greedy) and len({len(g) for g in greedy}) > (2 if ended else 0)
        for s, g in zip(seqs, greedy):
            assert m.beam_search(model, s, 1, 8, alpha=0.75)[0] == g


@pytest.mark.parametrize("penalty", ["power", "gnmt"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_beam_score_is_its_log_probability(script, beam_size, penalty):
    """The score beam search returns is sum_t log p(y_t | y_<t, x) of the returned ids, as the model gives
    it under teacher forcing, divided by L^alpha (or GNMT's ((5 + L) / 6)^alpha), L counting <eos>."""
    _, m = script
    model = trained_tiny(script)
    seqs, _, _ = random_sources(10, seed=5)
    for s in seqs:
        ids, score = m.beam_search(model, s, beam_size, 8, alpha=0.75, penalty=penalty)
        L = len(ids)
        divisor = L**0.75 if penalty == "power" else ((5 + L) / 6) ** 0.75
        assert score == pytest.approx(sequence_log_prob(model, s, ids) / divisor, abs=1e-5)


A, B, C, EOS = 4, 5, 6, 3

# d2l 10.8's beam-search figure: the next-token distribution after each prefix, over the vocabulary
# <unk> <pad> <bos> <eos> A B C. Greedy search: A (.5), B (.4), C (.4), <eos> (.6): p = 0.048.
# Better: A (.5), C (.3), B (.6), <eos> (.6): p = 0.054, which a beam of 2 finds.
#                <unk> <pad> <bos> <eos>   A     B     C
D2L_FIGURE = {
    "": [0, 0, 0, 0.10, 0.50, 0.25, 0.15],
    "A": [0, 0, 0, 0.20, 0.10, 0.40, 0.30],
    "B": [0, 0, 0, 0.10, 0.30, 0.30, 0.30],
    "AB": [0, 0, 0, 0.20, 0.20, 0.20, 0.40],
    "AC": [0, 0, 0, 0.20, 0.10, 0.60, 0.10],
    "ABC": [0, 0, 0, 0.60, 0.20, 0.10, 0.10],
    "ACB": [0, 0, 0, 0.60, 0.20, 0.10, 0.10],
    "other": [0, 0, 0, 0.70, 0.10, 0.10, 0.10],
}
# A sentence that ends at once (<eos>, p = .4) is finished first, but "A <eos>" (p = .6 * .9 = .54)
# finishes one step later and is better: a beam of 2 must not stop at its first finished sentence.
EARLY_EOS = {
    "": [0, 0, 0, 0.40, 0.60, 0, 0],
    "A": [0, 0, 0, 0.90, 0.05, 0.05, 0],
    "other": [0, 0, 0, 0.90, 0.05, 0.05, 0],
}


class TableModel(nn.Module):
    """A decoder with hand-set weights: table[prefix] is the distribution of the next token.

    The state is the node of the prefix read so far; `step` moves along the token just read, then
    answers that node's distribution (prefixes not in the table go to "other").
    """

    def __init__(self, table):
        super().__init__()
        self.nodes = list(table)
        self.logp = torch.log(torch.tensor([table[k] for k in self.nodes]))  # (nodes, V): the weights
        self.start_node = len(self.nodes)  # before <bos>

    def next_node(self, node, token):
        if node == self.start_node:
            return self.nodes.index("")
        prefix = self.nodes[node] + "?ABC"[token - EOS]
        return self.nodes.index(prefix) if prefix in self.nodes else self.nodes.index("other")

    def start(self, src, src_len):
        return torch.full((1, len(src), 1), float(self.start_node)), (torch.zeros(len(src), 1),)

    def step(self, y, state, memory):
        nodes = [self.next_node(int(n), int(t)) for n, t in zip(state[0, :, 0], y)]
        return self.logp[nodes], torch.tensor(nodes, dtype=torch.float)[None, :, None]


def test_beam_search_beats_greedy_on_d2l_example(script):
    """d2l 10.8's example: greedy search returns A B C <eos> (p = .048); a beam of 2 finds A C B <eos>
    (p = .054), the more probable sentence; both scores are their log-probabilities (alpha = 0)."""
    _, m = script
    model, src = TableModel(D2L_FIGURE), torch.tensor([4, 3])
    assert m.greedy_search(model, src[None], torch.tensor([2]), max_len=10)[0] == [A, B, C, EOS]
    assert m.beam_search(model, src, 1, 10, alpha=0.0) == ([A, B, C, EOS], pytest.approx(math.log(0.048)))
    ids, score = m.beam_search(model, src, 2, 10, alpha=0.0)
    assert ids == [A, C, B, EOS] and score == pytest.approx(math.log(0.054))


def test_beam_search_waits_for_beam_size_finished(script):
    """A beam of 2 keeps searching after its first finished sentence (<eos>, p = .4) until two are
    finished, and returns the better one, A <eos> (p = .54)."""
    _, m = script
    ids, score = m.beam_search(TableModel(EARLY_EOS), torch.tensor([4, 3]), 2, 10, alpha=0.0)
    assert ids == [A, EOS] and score == pytest.approx(math.log(0.54))


# %% real data: a smoke run, then --translate


def test_smoke_run_then_translate(script, tmp_path, capsys):
    """A seconds-long run on the real corpus: the training loss falls, and test BLEU rises above a floor
        that the same model untrained does not reach; the run's files are written; beam size 1 scores what
        greedy search scores. Then --translate reads the checkpoint: greedy and beam translations, unknown
        words named, and an empty or too long sentence, or a missing checkpoint, refused (exit 2). Last,
    --resume continues the run for one more epoch, and refuses a changed setting or nothing to do."""
    name, m = script
    out = tmp_path / "run"
    metrics = m.main(["--smoke", "--out-dir", str(out), "--beam-sizes", "1", "2"])
    hist = metrics["history"]
    assert hist["train_loss"][-1] < 0.75 * hist["train_loss"][0]
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    assert metrics["test_bleu"] > 1.5 and metrics["test_bleu_beam"]["1"] == metrics["test_bleu"]
    assert metrics["n_test"] >= 300 and metrics["n_train"] == 6000
    by_length = metrics["test_bleu_by_length"]  # sources of 1-4 and 5 words: every test pair in one bucket
    assert (
        list(by_length) == ["1-4 words", "5-8 words"]
        and sum(v["pairs"] for v in by_length.values()) == metrics["n_test"]
    )
    assert all(0 <= v["bleu"] <= 100 for v in by_length.values())
    files = {"metrics.json", "checkpoint.pt", "examples.md"} | ({"attention.png"} if name == "bahdanau" else set())
    assert files <= {p.name for p in out.iterdir()}
    assert (out / "examples.md").read_text().count("\n") == 14  # header, rule, 12 examples

    # the floor: the same architecture untrained, on the same test set
    arrays, words, src_vocab, tgt_vocab, _ = m.load_translation(5, 6000, 300, 200, 2, 0)
    torch.manual_seed(0)
    untrained = getattr(m, MODELS[name])(len(src_vocab), len(tgt_vocab), 64, 128, 2, 0.0)
    t = m.to_tensors(arrays["test"], "cpu")
    hyps = m.translate_split(untrained, t, 6, 0, 0.75, "power")
    assert m.corpus_bleu([m.strip(h, tgt_vocab) for h in hyps], words["test"][1]) < 0.5

    capsys.readouterr()
    answer = m.main(["--translate", "I am cold.", "--out-dir", str(out), "--beam-sizes", "2"])
    assert answer["source"] == "i am cold ." and set(answer) == {"source", "greedy", "beam 2"}
    assert answer["greedy"] and re.fullmatch(r".* \(score -?\d+\.\d{3}\)", answer["beam 2"])
    m.main(["--translate", "i am zzyzx .", "--out-dir", str(out), "--beam-sizes", "2"])
    assert "unknown to the model (read as <unk>): zzyzx" in capsys.readouterr().out
    check_translate_refusals(m.main, out, tmp_path, capsys)

    # --resume: one more epoch continues the history; a changed setting or nothing to do is refused
    resumed = m.main(["--smoke", "--out-dir", str(out), "--beam-sizes", "1", "2", "--resume", "--epochs", "6"])
    assert resumed["history"]["train_loss"][:5] == hist["train_loss"] and len(resumed["history"]["train_loss"]) == 6
    for argv, message in [(["--lr", "0.5", "--epochs", "7"], "--lr 0.01 -> 0.5"), (["--epochs", "6"], "nothing to do")]:
        with pytest.raises(SystemExit) as exc:
            m.main(["--smoke", "--out-dir", str(out), "--resume", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_is_one_line(script, missing_data_error):
    _, m = script
    assert "fra-eng" in missing_data_error(m.main)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--beam-sizes", "0"], "--beam-sizes"),
        (["--length-alpha", "-1"], "--length-alpha"),
        (["--length-penalty", "cubic"], "--length-penalty"),
        (["--max-len", "0"], "--max-len"),
        (["--n-test", "0"], "--n-test"),
        (["--dropout", "1"], "--dropout"),
        (["--clip", "nan"], "--clip"),
    ],
)
def test_bad_flags(script, usage_error, argv, flag):
    _, m = script
    assert flag in usage_error(m, argv, loader="load_translation")
