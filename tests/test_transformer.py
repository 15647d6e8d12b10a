"""Tests of 06-transformers/transformer_torch.py, the encoder-decoder Transformer for translation.

The layers against their PyTorch twins with copied weights (nn.TransformerEncoderLayer and
nn.TransformerDecoderLayer, post-LN and norm_first=True; outputs and gradients in float64), the
hand-written and the fused (SDPA) attention equal through the whole model, the masks (a padded source
token and a future target token change nothing), the positional encoding and the Noam schedule against
their formulas, the presets' parameter counts (the paper's base at a 37,000-token vocabulary), beam
search against greedy search and the model's own log-probabilities, BLEU against sacreBLEU, and smoke
runs on the real corpus and on the copy task with asserted metrics, then --translate and --resume.
"""

import copy
import dataclasses
import math
import re

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from gradcheck import rel_error
from smoke import check_translate_refusals
from torch import nn

TOL = 1e-10


@pytest.fixture(scope="module")
def tf(load_script):
    return load_script("06-transformers/transformer_torch.py")


def tiny_config(tf, **kw):
    """A small float64-friendly config: 2 layers, width 12, 3 heads, no dropout."""
    return tf.TransformerConfig(
        **{
            "vocab_size": 11,
            "n_layer": 2,
            "n_head": 3,
            "n_embd": 12,
            "d_ff": 20,
            "block_size": 16,
            "dropout": 0.0,
            **kw,
        }
    )


def randomise(module, seed=0):
    """Every parameter to random values (LayerNorm's ones and zeros and zero biases would hide a swap)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in module.parameters():
            w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.5)
    return module


def copy_attention(ours, ref):
    """nn.MultiheadAttention's packed in_proj (rows q, k, v) into our q_proj, k_proj, v_proj."""
    with torch.no_grad():
        for i, lin in enumerate((ours.q_proj, ours.k_proj, ours.v_proj)):
            E = lin.weight.shape[0]
            lin.weight.copy_(ref.in_proj_weight[i * E : (i + 1) * E])
            lin.bias.copy_(ref.in_proj_bias[i * E : (i + 1) * E])
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())


def copy_layer(ours, ref):
    """A torch Transformer layer's weights into ours: the names are the same but for the attention packing
    and the decoder's cross-attention (multihead_attn in torch)."""
    copy_attention(ours.self_attn, ref.self_attn)
    if hasattr(ref, "multihead_attn"):
        copy_attention(ours.cross_attn, ref.multihead_attn)
    for name in ("linear1", "linear2", "norm1", "norm2", "norm3"):
        if hasattr(ref, name):
            getattr(ours, name).load_state_dict(getattr(ref, name).state_dict())


def check_grads(ours, ref, inputs, ref_inputs):
    """The gradients of the inputs and of every weight of ours equal ref's, ref's weight gradients moved to our
    names by the same mapping that copied the weights."""
    for a, b in zip(inputs, ref_inputs):
        assert rel_error(a.grad, b.grad) < TOL
    ref_as_grads, ours_as_grads = copy.deepcopy(ref), copy.deepcopy(ours)
    with torch.no_grad():
        for g, w in zip(ref_as_grads.parameters(), ref.parameters()):
            g.copy_(w.grad)
    copy_layer(ours_as_grads, ref_as_grads)
    names = dict(ours_as_grads.named_parameters())
    for name, w in ours.named_parameters():
        check_grad(name, w.grad, names[name])


def check_grad(name, a, b):
    """Relative error <= 1e-10, except for the key bias: its gradient is exactly 0 (adding b_k . q to every
    score of a query shifts its softmax row, which changes nothing), so both must be zero up to round-off."""
    if name.endswith("k_proj.bias"):
        assert a.abs().max() < 1e-12 and b.abs().max() < 1e-12, name
    else:
        assert rel_error(a, b) < TOL, name


@pytest.mark.parametrize("pre_ln", [False, True])
def test_encoder_layer_equals_torch(tf, pre_ln):
    """Our EncoderLayer equals nn.TransformerEncoderLayer(norm_first=pre_ln) with the same weights, on a padded
    batch (key padding mask), in float64: the outputs at real positions and the gradients of the input and of
    every weight for a random upstream gradient, relative error <= 1e-10."""
    cfg = tiny_config(tf, pre_ln=pre_ln)
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(12, 3, 20, dropout=0.0, batch_first=True, norm_first=pre_ln).double()
    randomise(ref)
    ours = tf.EncoderLayer(cfg).double()
    copy_layer(ours, ref)
    lengths = torch.tensor([6, 3, 1])
    pad = torch.arange(6)[None, :] >= lengths[:, None]  # (B, S) True = padding, torch's convention
    x = torch.randn(3, 6, 12, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    up = torch.randn(3, 6, 12, dtype=torch.float64) * (~pad)[..., None]  # padded outputs are not used
    y_ref = ref(x1, src_key_padding_mask=pad)
    y = ours(x2, (~pad)[:, None, None, :])  # ours: True = may attend
    assert rel_error(y * (~pad)[..., None], y_ref * (~pad)[..., None]) < TOL
    (y_ref * up).sum().backward()
    (y * up).sum().backward()
    check_grads(ours, ref, [x2], [x1])


@pytest.mark.parametrize("pre_ln", [False, True])
def test_decoder_layer_equals_torch(tf, pre_ln):
    """Our DecoderLayer equals nn.TransformerDecoderLayer(norm_first=pre_ln): causal self-attention,
    cross-attention to a padded memory, the FFN; outputs and gradients (input, memory, weights)."""
    cfg = tiny_config(tf, pre_ln=pre_ln)
    torch.manual_seed(1)
    ref = nn.TransformerDecoderLayer(12, 3, 20, dropout=0.0, batch_first=True, norm_first=pre_ln).double()
    randomise(ref, seed=1)
    ours = tf.DecoderLayer(cfg).double()
    copy_layer(ours, ref)
    T, S = 5, 7
    pad = torch.arange(S)[None, :] >= torch.tensor([7, 4])[:, None]
    x, mem = torch.randn(2, T, 12, dtype=torch.float64), torch.randn(2, S, 12, dtype=torch.float64)
    x1, x2, m1, m2 = (t.clone().requires_grad_() for t in (x, x, mem, mem))
    up = torch.randn(2, T, 12, dtype=torch.float64)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # torch: True = may not attend
    y_ref = ref(x1, m1, tgt_mask=future, memory_key_padding_mask=pad)
    y = ours(x2, m2, (~pad)[:, None, None, :], ~future[None, None])
    assert rel_error(y, y_ref) < TOL
    (y_ref * up).sum().backward()
    (y * up).sum().backward()
    check_grads(ours, ref, [x2, m2], [x1, m1])


def model_and_batch(tf, seed=0, **kw):
    """A tiny float64 Transformer at random weights and a padded batch of sources and targets."""
    torch.manual_seed(seed)
    model = randomise(tf.Transformer(tiny_config(tf, **kw)).double(), seed)
    src = torch.randint(0, 8, (3, 7))
    src_len = torch.tensor([7, 4, 2])
    tgt = torch.randint(0, 8, (3, 6))
    return model, src, src_len, tgt


@pytest.mark.parametrize("pre_ln", [False, True])
def test_hand_and_sdpa_paths_agree(tf, pre_ln):
    """The whole model with F.scaled_dot_product_attention gives the hand-written path's logits and
    gradients (float64, <= 1e-10), with padded sources and the causal mask."""
    out = []
    for sdpa in (False, True):
        model, src, src_len, tgt = model_and_batch(tf, pre_ln=pre_ln, sdpa=sdpa)
        logits = model(src, src_len, tgt)
        (
            logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(3), dtype=logits.dtype)
        ).sum().backward()
        out.append({"logits": logits, **{name: w.grad for name, w in model.named_parameters()}})
    assert out[0].keys() == out[1].keys()
    for name in out[0]:
        check_grad(name, out[0][name], out[1][name])


@pytest.mark.parametrize("pre_ln", [False, True])
def test_padding_and_future_tokens_change_nothing(tf, pre_ln):
    """Changing a source token beyond its sentence's length changes no logit; changing target tokens after
    position t changes no logit at positions <= t (the decoder is causal); the gradient that reaches a padded
    source embedding through the loss is zero."""
    model, src, src_len, tgt = model_and_batch(tf, pre_ln=pre_ln)
    logits = model(src, src_len, tgt)
    src2 = src.clone()
    src2[1, 4:], src2[2, 2:] = 9, 10  # padding positions only
    assert rel_error(model(src2, src_len, tgt), logits) < 1e-14
    for t in range(tgt.shape[1] - 1):
        tgt2 = tgt.clone()
        tgt2[:, t + 1 :] = (tgt2[:, t + 1 :] + 3) % 11
        changed = model(src, src_len, tgt2)
        assert rel_error(changed[:, : t + 1], logits[:, : t + 1]) < 1e-14
        assert rel_error(changed[:, t + 1 :], logits[:, t + 1 :]) > 1e-6  # the future does change the future
    src2[1, 3] = 9  # a real token: the output must change
    assert rel_error(model(src2, src_len, tgt)[1], logits[1]) > 1e-3


def test_inputs_are_scaled_embeddings_plus_positions_and_the_output_is_tied(tf):
    """x = sqrt(d_model) E[ids] + PE (dropout off), and the logits are the last hidden state times E^T, the
    one embedding matrix shared by source, target and output, with no bias."""
    model, src, src_len, tgt = model_and_batch(tf)
    model.eval()
    expected = model.embed.weight[src] * math.sqrt(12) + tf.positional_encoding(7, 12).double()
    assert rel_error(model.inputs(src), expected) < 1e-14
    names = [n for n, _ in model.named_parameters()]
    assert sum("embed" in n for n in names) == 1 and not any("lm_head" in n or "generator" in n for n in names)
    logits = model(src, src_len, tgt)
    memory, mask = model.encode(src, src_len)
    h = tgt_hidden(model, tgt, memory, mask)
    assert rel_error(logits, h @ model.embed.weight.T) < 1e-14


def tgt_hidden(model, tgt, memory, mask):
    """The decoder's last hidden state, by running its layers as decode does but stopping before E^T."""
    T = tgt.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    x = model.inputs(tgt)
    for layer in model.decoder:
        x = layer(x, memory, mask, causal)
    return model.dec_norm(x)


def test_length_batches_cover_every_pair_once_and_group_similar_lengths(tf):
    """Every pair lands in exactly one batch of at most batch_size; inside a window of 50 batches the pairs are
    sorted by length, so a batch spans far fewer lengths than a random one; another seed, another order."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, 7000)
    batches = tf.length_batches(lengths, 32, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(7000)) and all(0 < len(b) <= 32 for b in batches)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in np.array_split(rng.permutation(7000), len(batches))])
    assert spread < 0.2 * random_spread
    other = tf.length_batches(lengths, 32, np.random.default_rng(2))
    assert [b.tolist() for b in other] != [b.tolist() for b in batches]


def test_positional_encoding_formula(tf):
    """PE[t, 2i] = sin(t / 10000^(2i/d)) and PE[t, 2i+1] = cos(t / 10000^(2i/d)), entry by entry."""
    T, d = 50, 16
    pe = tf.positional_encoding(T, d)
    assert pe.shape == (T, d)
    for t in range(T):
        for i in range(d // 2):
            angle = t / 10000 ** (2 * i / d)
            assert pe[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_noam_schedule(tf):
    """lrate = d_model^-0.5 min(step^-0.5, step warmup^-1.5) (section 5.3): linear up to the warm-up, its
    maximum d^-0.5 warmup^-0.5 at step = warmup, then 1/sqrt(step). `peak` rescales the whole curve."""
    d, w = 512, 4000
    for step in (1, 10, 1000, 3999, 4000, 4001, 10_000, 100_000):
        expected = d**-0.5 * min(step**-0.5, step * w**-1.5)
        assert tf.noam(step, d, w) == pytest.approx(expected, rel=1e-12)
    assert tf.noam(4000, d, w) == pytest.approx(d**-0.5 * w**-0.5) == pytest.approx(7.0e-4, rel=0.01)
    assert tf.noam(200, d, w) == pytest.approx(2 * tf.noam(100, d, w))  # linear warm-up
    assert tf.noam(16_000, d, w) == pytest.approx(tf.noam(4000, d, w) / 2)  # 1 / sqrt(step) decay
    assert tf.noam(4000, d, w, peak=1e-3) == pytest.approx(1e-3)
    assert tf.noam(8000, d, w, peak=1e-3) == pytest.approx(1e-3 / math.sqrt(2))


def expected_params(V, N, C, F_, pre_ln):
    """Count by hand: the shared embedding V C; an attention layer 4 (C^2 + C); the FFN 2 C F + F + C; a
    LayerNorm 2 C. Encoder layer: attention, FFN, 2 norms; decoder layer: 2 attentions, FFN, 3 norms."""
    attn, ffn, norm = 4 * (C * C + C), 2 * C * F_ + F_ + C, 2 * C
    return V * C + N * (attn + ffn + 2 * norm) + N * (2 * attn + ffn + 3 * norm) + (2 * norm if pre_ln else 0)


def test_preset_parameter_counts(tf):
    """base at a 37,000-token shared vocabulary: 63,082,496 parameters (no final layer norms, no output bias:
    the output layer is E^T; the paper says 65M, see the note under PRESETS); big: 6 + 6 layers of width 1024; each
    equal to the count by hand. Built on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        base = tf.Transformer(tf.PRESETS["base"])
        big = tf.Transformer(tf.PRESETS["big"])
        base_pre = tf.Transformer(dataclasses.replace(tf.PRESETS["base"], pre_ln=True))
    count = lambda m: sum(w.numel() for w in m.parameters())  # noqa: E731
    assert tf.PRESETS["base"].vocab_size == 37000
    assert count(base) == 63_082_496 == expected_params(37000, 6, 512, 2048, False)
    assert count(base_pre) == 63_082_496 + 4 * 512  # pre-LN closes each stack with a LayerNorm
    assert count(big) == expected_params(37000, 6, 1024, 4096, False) == 214_245_376
    cpu = tf.PRESETS["cpu"]
    with torch.device("meta"):
        assert (
            count(tf.Transformer(cpu)) == expected_params(cpu.vocab_size, cpu.n_layer, 256, 1024, False)
            and cpu.n_layer == 2
        )


# %% searches and BLEU

PAD, BOS, EOS = 8, 9, 10  # tiny_config's vocabulary: symbols 0..7, then the three specials

_TRAINED = {}


def trained_reverser(tf):
    """A tiny model trained for a few seconds to write its source backwards (once per process): unlike a model
    at random weights, it depends on the source and stops at varied lengths."""
    if "model" not in _TRAINED:
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        model = tf.Transformer(tiny_config(tf, n_embd=24, d_ff=48))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(250):
            seqs = [rng.integers(0, 8, rng.integers(1, 6)).tolist() for _ in range(32)]
            b = {
                k: torch.from_numpy(v).long()
                for k, v in tf.id_arrays(seqs, [s[::-1] for s in seqs], PAD, BOS, EOS).items()
            }
            loss = F.cross_entropy(
                model(b["src"], b["src_len"], b["dec_in"]).flatten(0, 1), b["label"].flatten(), ignore_index=PAD
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        _TRAINED["model"] = model.eval()
    return _TRAINED["model"]


def sources(n, seed):
    """n sources of 1-5 symbols, each ending with EOS, and the padded batch."""
    rng = np.random.default_rng(seed)
    seqs = [[*rng.integers(0, 8, rng.integers(1, 6)).tolist(), EOS] for _ in range(n)]
    lens = torch.tensor([len(s) for s in seqs])
    src = torch.full((n, int(lens.max())), PAD)
    for i, s in enumerate(seqs):
        src[i, : len(s)] = torch.tensor(s)
    return [torch.tensor(s) for s in seqs], src, lens


def test_the_trained_reverser_reverses(tf):
    """The fixture model really learned its task (else the search tests below would test little)."""
    seqs, src, lens = sources(50, seed=3)
    out = tf.greedy_search(trained_reverser(tf), src, lens, 8, BOS, EOS)
    assert np.mean([o == [*s[:-1].flip(0).tolist(), EOS] for o, s in zip(out, seqs)]) > 0.8


def test_beam_one_is_greedy(tf):
    """Beam size 1 returns greedy search's output sentence by sentence: greedy runs batched and padded, beam
    search on one unpadded source. On the trained model (sentences end at varied lengths) and on one at
    random weights (sentences need not end)."""
    seqs, src, lens = sources(40, seed=7)
    torch.manual_seed(5)
    for model in (trained_reverser(tf), tf.Transformer(tiny_config(tf)).eval()):
        greedy = tf.greedy_search(model, src, lens, 8, BOS, EOS)
        for s, g in zip(seqs, greedy):
            assert tf.beam_search(model, s, 1, 8, BOS, EOS)[0] == g
    assert len({len(g) for g in tf.greedy_search(trained_reverser(tf), src, lens, 8, BOS, EOS)}) > 2


def log_prob(model, src, ids):
    """sum_t log p(ids_t | ids_<t, src) by teacher forcing."""
    with torch.no_grad():
        logits = model(src[None], torch.tensor([len(src)]), torch.tensor([[BOS, *ids[:-1]]]))
    return F.log_softmax(logits[0], -1)[torch.arange(len(ids)), torch.tensor(ids)].sum().item()


@pytest.mark.parametrize("penalty", ["power", "gnmt"])
def test_beam_score_is_its_log_probability(tf, penalty):
    """The score beam search returns is the returned ids' log-probability under teacher forcing divided by
    L^alpha (or ((5 + L) / 6)^alpha), L counting EOS."""
    model = trained_reverser(tf)
    seqs, _, _ = sources(12, seed=11)
    for s in seqs:
        for k in (1, 3):
            ids, score = tf.beam_search(model, s, k, 8, BOS, EOS, alpha=0.75, penalty=penalty)
            L = len(ids)
            div = L**0.75 if penalty == "power" else ((5 + L) / 6) ** 0.75
            assert ids[-1] == EOS and score == pytest.approx(log_prob(model, s, ids) / div, abs=1e-5)


def test_corpus_bleu_equals_sacrebleu(tf):
    """On 200 random corpora over small vocabularies (empty hypotheses, sometimes no match of an order),
    corpus_bleu equals sacreBLEU's corpus_bleu (tokenize="none", exp smoothing)."""
    rng = np.random.default_rng(2)
    zero = 0
    for _ in range(200):
        n, V = int(rng.integers(1, 20)), int(rng.integers(3, 12))
        hyps = [[f"w{t}" for t in rng.integers(0, V, rng.integers(0, 10))] for _ in range(n)]
        refs = [[f"w{t}" for t in rng.integers(0, V, rng.integers(1, 10))] for _ in range(n)]
        ours = tf.corpus_bleu(hyps, refs)
        sacre = sacrebleu.corpus_bleu([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]], tokenize="none")
        assert ours == pytest.approx(sacre.score, abs=1e-9)
        zero += ours == 0
    assert 0 < zero < 200
    assert tf.corpus_bleu([["le", "chat", "dort", "."]], [["le", "chat", "dort", "."]]) == pytest.approx(100)


# %% real data: smoke runs, --translate, --resume


def test_smoke_run_then_translate_and_resume(tf, tmp_path, capsys):
    """A seconds-long run on the real corpus: the loss falls, test BLEU clears a floor that the same model
    untrained does not reach, beam 1 scores what greedy scores, the files are written. Then --translate
    reads the checkpoint, and --resume continues the history, refusing a changed setting."""
    out = tmp_path / "run"
    metrics = tf.main(["--smoke", "--out-dir", str(out), "--beam-sizes", "1", "2"])
    hist = metrics["history"]
    assert hist["train_loss"][-1] < 0.75 * hist["train_loss"][0] and hist["val_loss"][-1] < hist["val_loss"][0]
    assert metrics["test_bleu"] > 1.0 and metrics["test_bleu_beam"]["1"] == metrics["test_bleu"]
    assert metrics["n_train"] == 6000 and metrics["vocab_size"] == 600 and metrics["params_base_37k"] == 63_082_496
    assert {"metrics.json", "checkpoint.pt", "examples.md", "attention.png"} <= {p.name for p in out.iterdir()}
    assert (out / "examples.md").read_text().count("\n") == 14  # header, rule, 12 examples

    # the floor: the same model untrained, on the same test set and the same BPE
    arrays, words, tok, _ = tf.load_translation(5, 6000, 300, 200, 600, 0)
    torch.manual_seed(0)
    untrained = tf.Transformer(tf.TransformerConfig(**metrics["model_config"]))
    t = tf.to_tensors(arrays["test"], "cpu")
    hyps = tf.translate_split(untrained, t, 12, *list(tok.specials.values())[1:])
    assert tf.corpus_bleu([tf.words_of(h, tok) for h in hyps], words["test"][1]) < 0.3

    capsys.readouterr()
    answer = tf.main(["--translate", "I am cold.", "--out-dir", str(out), "--beam-sizes", "2"])
    assert answer["source"] == "i am cold ." and set(answer) == {"source", "greedy", "beam 2"}
    assert answer["greedy"] and re.fullmatch(r".* \(score -?\d+\.\d{3}\)", answer["beam 2"])
    check_translate_refusals(tf.main, out, tmp_path, capsys)

    resumed = tf.main(["--smoke", "--out-dir", str(out), "--beam-sizes", "1", "--resume", "--epochs", "7"])
    assert resumed["history"]["train_loss"][:6] == hist["train_loss"] and len(resumed["history"]["train_loss"]) == 7
    for argv, message in [
        (["--lr", "0.5", "--epochs", "8"], "--lr 0.005 -> 0.5"),
        (["--epochs", "7"], "nothing to do"),
    ]:
        with pytest.raises(SystemExit) as exc:
            tf.main(["--smoke", "--out-dir", str(out), "--resume", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_copy_task_is_learned(tf, tmp_path):
    """The sanity run: after seconds of training, most random sequences of 1-10 symbols are copied exactly."""
    argv = ["--task", "copy", "--smoke", "--out-dir", str(tmp_path)]
    metrics = tf.main(argv)
    assert metrics["test_exact"] > 0.5 and metrics["test_token_acc"] > 0.8
    assert metrics["history"]["val_score"][-1] > metrics["history"]["val_score"][0]


def test_missing_data_is_one_line(tf, missing_data_error):
    assert "fra-eng" in missing_data_error(tf.main)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--vocab-size", "258"], "--vocab-size"),
        (["--n-embd", "30", "--n-head", "4"], "--n-embd"),
        (["--n-layer", "0"], "--n-layer"),
        (["--warmup-steps", "0"], "--warmup-steps"),
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--beam-sizes", "0"], "--beam-sizes"),
        (["--arch", "huge"], "--arch"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "nan"], "--lr"),
    ],
)
def test_bad_flags(tf, usage_error, argv, flag):
    assert flag in usage_error(tf, argv, loader="load_translation")
