"""Tests of 06-transformers/bert_torch.py, BERT pre-trained with MLM + NSP on PTB, then fine-tuned.

The model against Hugging Face's BertForPreTraining at a tiny random configuration, saved with save_pretrained and
loaded through Bert.from_hf: equal MLM and NSP logits with segment ids and padding, in float32 (relative error
max|a-b| / (max|a| + max|b|) <= 1e-5) and float64 (<= 1e-10), at Hugging Face's initialisation and with every
weight redrawn at std 0.2 (at std 0.02 the tanh GELU passes for the exact one: shown here); old gamma/beta names;
the refusals. This equality pins post-LN, the exact GELU, the tied decoder and the padding mask. Then the preset
parameter counts on the meta device, WordPiece against Hugging Face's BertTokenizer, the masking statistics (15%,
80/10/10, no special token), the NSP pairs, framing and segments on real PTB, padding independence, hand attention
against SDPA, the schedule, the word-order task, and smoke runs on real PTB (Ctrl-C and --resume, --fill-mask,
--init-from, bad flags).
"""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from gradcheck import rel_error
from safetensors.torch import load_file, save_file

from data import ptb_sentences

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "of", "to", "and", "in", "a", "said", "company", "duke", "daughter", "un", "thought", "caf", "naive",
         "x", "end", "known", "stock", "market", "year", "it", "is", "for", "mr", "n", "t", "s", "new"]  # fmt: skip
PIECES = ["##aff", "##able", "##s", "##ing", "##ful", "##e", "##4", "##2"]
VOCAB = SPECIALS + list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,'-?$%&():;") + WORDS + PIECES
TEXT = "The Duke's daughter -- unaffable,\tnaïve CAFÉS? x42 thoughtful zebra\x00 un-known [MASK] end.\u3000 mr. $N"


@pytest.fixture(scope="module")
def bt(load_script):
    return load_script("06-transformers/bert_torch.py")


def redraw(model, std=0.2, seed=0):
    """Every weight to N(0, std^2), LayerNorm gains to 1 + N(0, std^2): activations of order one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            noise = torch.randn(w.shape, generator=g, dtype=w.dtype) * std
            w.copy_(1 + noise if "LayerNorm.weight" in name else noise)
    return model


def save_hf(folder, std=None):
    """A random BertForPreTraining (no dropout) saved with save_pretrained, with VOCAB as its vocab.txt."""
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=20, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(config).eval()
    if std is not None:
        redraw(hf, std)
    hf.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return hf


@pytest.fixture(scope="module", params=["hf_init", "std_0.2"])
def hf_pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return folder, save_hf(folder, None if request.param == "hf_init" else 0.2)


def padded_inputs(V=None, T=20):
    """Three sequences of 20, 14 and 9 tokens, right-padded with 0; segment 1 on the second half of each."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V or len(VOCAB), (3, T), generator=g)
    mask = torch.zeros(3, T, dtype=torch.long)
    seg = torch.zeros(3, T, dtype=torch.long)
    for i, n in enumerate((20, 14, 9)):
        mask[i, :n], seg[i, n // 2 : n] = 1, 1
        ids[i, n:] = 0
    return ids, seg, mask


def compare(ours, hf, double=False):
    """The larger relative error of the MLM and NSP logits of ours and hf on padded_inputs."""
    ids, seg, mask = padded_inputs()
    if double:
        ours, hf = copy.deepcopy(ours).double(), copy.deepcopy(hf).double()
    with torch.no_grad():
        mlm, nsp = ours(ids, seg, mask)
        ref = hf(input_ids=ids, token_type_ids=seg, attention_mask=mask)
    assert mlm.dtype == (torch.float64 if double else torch.float32)
    return max(rel_error(mlm, ref.prediction_logits), rel_error(nsp, ref.seq_relationship_logits))


def test_presets_have_the_reference_parameter_counts(bt):
    """bert-base as BertForPreTraining 110,106,428 (the encoder with pooler, BertModel, 109,482,240) and bert-large
    336,226,108, the decoder tied to the word embedding, on the meta device."""
    with torch.device("meta"):
        base, large = bt.Bert(bt.PRESETS["bert-base"]), bt.Bert(bt.PRESETS["bert-large"])
    count = lambda m: sum(w.numel() for w in m.parameters())
    assert count(base) == 110_106_428 and count(base.bert) == 109_482_240 and count(large) == 336_226_108
    assert base.cls.predictions.decoder.weight is base.bert.embeddings.word_embeddings.weight
    c = base.config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.n_inner) == (30522, 512, 12, 12, 768, 3072)


def test_names_are_hugging_faces(bt, tmp_path):
    """Our state dict has BertForPreTraining's names (its decoder weight and bias are tied copies)."""
    hf = save_hf(tmp_path)
    ours = bt.Bert.from_hf(tmp_path)
    theirs = set(hf.state_dict()) - {"cls.predictions.decoder.bias", "bert.embeddings.position_ids",
                                     "bert.embeddings.token_type_ids"}  # fmt: skip
    assert set(ours.state_dict()) == theirs


def test_logits_equal_hugging_face(bt, hf_pair):
    """from_hf(folder) gives Hugging Face's MLM and NSP logits with segment ids and padding: float32 <= 1e-5,
    float64 <= 1e-10."""
    folder, hf = hf_pair
    ours = bt.Bert.from_hf(folder).eval()
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    assert compare(ours, hf) < 1e-5 and compare(ours, hf, double=True) < 1e-10
    with torch.no_grad():
        logits = hf(*padded_inputs()[:1]).prediction_logits
    assert logits.abs().max() > (3.0 if "std" in folder.name else 0.05)  # the redrawn weights give large logits


def test_fill_mask_equals_hugging_face(bt, hf_pair, tmp_path):
    """main(["--init-from", folder, "--fill-mask", text]) gives Hugging Face's five likeliest tokens, and their
    probabilities, at each [MASK] of the text tokenised by WordPiece."""
    folder, hf = hf_pair
    text = "the duke [MASK] and the daughter [MASK] ."
    out = bt.main(["--init-from", str(folder), "--fill-mask", text, "--out-dir", str(tmp_path)])
    ids = transformers.BertTokenizer(str(folder / "vocab.txt")).encode(text)
    with torch.no_grad():
        probs = hf(torch.tensor([ids])).prediction_logits[0].softmax(-1)
    at = [t for t, i in enumerate(ids) if i == VOCAB.index("[MASK]")]
    assert len(at) == len(out["predictions"]) == 2
    for t, top in zip(at, out["predictions"]):
        ref = probs[t].topk(5)
        assert [w for w, _ in top] == [VOCAB[i] for i in ref.indices]
        assert [q for _, q in top] == pytest.approx(ref.values.tolist(), abs=1e-4)


def test_redrawn_weights_tell_the_gelus_apart(bt, tmp_path, monkeypatch):
    """Why the weights are redrawn: with GPT's tanh GELU in place of the exact one, the float32 logits still pass
    at Hugging Face's N(0, 0.02) initialisation (pre-activations too small to tell; only float64 sees it), and
    fail by far at std 0.2."""
    small, large = save_hf(tmp_path / "small"), save_hf(tmp_path / "large", 0.2)
    monkeypatch.setattr(bt, "gelu", lambda x: F.gelu(x, approximate="tanh"))
    at_init = bt.Bert.from_hf(tmp_path / "small").eval()
    assert compare(at_init, small) < 1e-5 and compare(at_init, small, double=True) > 1e-10
    assert compare(bt.Bert.from_hf(tmp_path / "large").eval(), large) > 1e-4


def test_old_names_and_a_stored_decoder_load(bt, tmp_path):
    """A checkpoint with TensorFlow's LayerNorm gamma/beta, the decoder's weight and bias stored and the position
    buffer (as old BERT releases) gives the same logits; an untied decoder is refused."""
    hf = save_hf(tmp_path / "hf", 0.2)
    sd = {k: w.clone().contiguous() for k, w in hf.state_dict().items()}
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"].clone()
    sd["bert.embeddings.position_ids"] = torch.arange(64)[None]
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): w
           for k, w in sd.items()}  # fmt: skip
    assert any(k.endswith("gamma") for k in old)
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    save_file(old, folder / "model.safetensors")
    assert compare(bt.Bert.from_hf(folder).eval(), hf, double=True) < 1e-10
    old["cls.predictions.decoder.weight"] += 1
    save_file(old, folder / "model.safetensors")
    with pytest.raises(ValueError, match="not tied"):
        bt.Bert.from_hf(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new'"),
        ({"model_type": "roberta"}, "model_type 'roberta'"),
        ({"is_decoder": True}, "decoder"),
        ({"num_hidden_layers": 3}, "missing"),
    ],
)
def test_unsupported_folders_are_refused_in_one_line(bt, tmp_path, change, message):
    """from_hf refuses what it does not build, and main says so in one line naming --init-from."""
    save_hf(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        bt.Bert.from_hf(tmp_path)
    with pytest.raises(SystemExit) as exc:
        bt.main(["--init-from", str(tmp_path), "--fill-mask", "a [MASK]", "--out-dir", str(tmp_path / "run")])
    assert exc.value.code.startswith(f"error: --init-from {tmp_path}") and message in exc.value.code
    assert "\n" not in exc.value.code


def test_a_bare_encoder_is_refused(bt, tmp_path):
    """A BertModel checkpoint (no MLM or NSP head) loads its names after "bert." and is refused for the heads."""
    save_hf(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    bare = {k.removeprefix("bert."): w for k, w in sd.items() if k.startswith("bert.")}
    save_file(bare, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['cls\."):
        bt.Bert.from_hf(tmp_path)


def test_wordpiece_equals_bert_tokenizer(bt, tmp_path):
    """WordPiece encodes as Hugging Face's BertTokenizer (lower case, accents and control characters dropped,
    punctuation and ideographs apart, longest pieces first, [UNK] for a word with no split, [MASK] whole)."""
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    ref = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    ours = bt.WordPiece(tmp_path / "vocab.txt")
    ascii_text = "Mr. Duke's\x0bstock,\x7f up $4.50 (un-known)\tthe end!! [MASK] x42\x1f"
    for text in (TEXT, ascii_text, "北京 is known", "a " + "b" * 101, "the <unk> of <unk>s"):
        ids = ours.encode(text)
        assert ids == ref.encode(text.replace("<unk>", "[UNK]"), add_special_tokens=False), text
    ids = ours.encode(TEXT)
    pieces = [VOCAB[i] for i in ids]
    assert {"##aff", "##able", "##ful", "##e", "##s", "[MASK]", "[UNK]"} <= set(pieces) and len(ours) == len(VOCAB)
    assert pieces[-4:] == ["mr", ".", "$", "n"] and "un" in pieces


def test_vocabulary_is_ptb_words(bt):
    """PTB's training split: the five special tokens, then its 9,998 words by frequency; <unk> is [UNK]; the
    masked-word examples need no [UNK]."""
    tok = bt.build_vocab(ptb_sentences("train"))
    assert tok.tokens[:6] == [*SPECIALS, "the"] and len(tok) == bt.BertConfig().vocab_size == 10003
    assert tok.encode("the <unk> zzz") == [5, tok.unk, tok.unk] and "<unk>" not in tok.index
    assert all(tok.unk not in tok.encode(text) for text in bt.EXAMPLES)
    assert len(tok.word_ids) == 9998 and tok.word_ids.min() == 5


def test_masking_statistics(bt):
    """Over 20,000 sequences: 15% of the eligible tokens chosen, of those 80% [MASK], 10% a random word, 10% kept,
    each within 5 sigma; [CLS], [SEP], [PAD] never chosen and never changed; targets are the original tokens."""
    tok = bt.Words(SPECIALS + [f"w{i}" for i in range(50)])
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 55, (20000, 30))
    ids[:, 0], ids[:, 12], ids[:, 24], ids[:, 25:] = tok.cls, tok.sep, tok.sep, tok.pad
    x, y = bt.mask_tokens(ids, tok, np.random.default_rng(1), 0.15)
    special = np.isin(ids, [tok.cls, tok.sep, tok.pad])
    chosen = y >= 0
    assert not chosen[special].any() and np.array_equal(x[special], ids[special])
    assert np.array_equal(y[chosen], ids[chosen]) and np.array_equal(x[~chosen], ids[~chosen])

    def within_5_sigma(k, n, p):
        return abs(k - n * p) < 5 * math.sqrt(n * p * (1 - p))

    n = chosen.sum()
    assert within_5_sigma(n, (~special).sum(), 0.15)
    masked, kept = (x[chosen] == tok.mask), (x[chosen] == ids[chosen])
    swapped = ~masked & ~kept
    assert within_5_sigma(masked.sum(), n, 0.8)
    assert within_5_sigma(kept.sum(), n, 0.1 + 0.1 / 50)  # a random word is the original one time in 50
    assert within_5_sigma(swapped.sum(), n, 0.1 * 49 / 50)
    assert np.isin(x[chosen][swapped], tok.word_ids).all()
    counts = np.bincount(x[chosen][swapped], minlength=55)[5:]
    assert counts.min() > 0.5 * counts.mean()  # every word among the random ones


def test_nsp_pairs_are_balanced_and_true(bt):
    """Labels 0 and 1 each half of 100,000 pairs (5 sigma); label 0: B is the sentence after A; label 1: B at least
    100 lines from A, either way round the corpus."""
    a, b, label = bt.nsp_pairs(1000, 100_000, np.random.default_rng(0))
    assert abs(label.sum() - 50_000) < 5 * math.sqrt(100_000 / 4)
    assert np.array_equal(b[label == 0], a[label == 0] + 1)
    gap = np.abs(b - a)[label == 1]
    assert np.minimum(gap, 1000 - gap).min() >= 100 and (a < 999).all() and b.max() <= 999


def test_pretrain_batches_on_ptb_frame_true_pairs(bt):
    """On real PTB: each row is [CLS] A [SEP] B [SEP] [PAD]..., segment 0 up to the first [SEP] and 1 on B [SEP],
    the mask 1 at tokens; the unmasked A and B are the sentences nsp_pairs drew: consecutive for label 0."""
    sents = ptb_sentences("valid")
    tok = bt.build_vocab(ptb_sentences("train"))
    ids = [np.array(tok.encode(" ".join(s))) for s in sents]
    b = bt.pretrain_batch(ids, 64, 128, tok, np.random.default_rng(3))
    a_idx, b_idx, label = bt.nsp_pairs(len(ids), 64, np.random.default_rng(3))  # the same draws
    assert np.array_equal(label, b["nsp_labels"]) and 10 < label.sum() < 54
    original = np.where(b["mlm_labels"] >= 0, b["mlm_labels"], b["input_ids"])
    for row, seg, att, i, j in zip(original, b["token_type_ids"], b["attention_mask"], a_idx, b_idx):
        n = att.sum()
        assert att[:n].all() and not att[n:].any() and (row[n:] == tok.pad).all()
        sep = np.flatnonzero(row == tok.sep)
        assert row[0] == tok.cls and len(sep) == 2 and sep[1] == n - 1
        assert np.array_equal(row[1 : sep[0]], ids[i]) and np.array_equal(row[sep[0] + 1 : sep[1]], ids[j])
        assert not seg[: sep[0] + 1].any() and seg[sep[0] + 1 : n].all() and not seg[n:].any()
    assert (b["mlm_labels"][b["input_ids"] == tok.mask] >= 0).all()


def test_frame_truncates_the_longer_side(bt):
    """Pairs too long lose tokens from the end of the longer side; singles are [CLS] A [SEP]; padding to the longest."""
    tok = bt.Words(SPECIALS + ["a", "b"])
    ids, seg, att = bt.frame([([5, 5, 5, 5, 5], [6, 6]), ([5], [6, 6, 6, 6, 6, 6]), ([5, 6], None)], tok, 8)
    assert ids.tolist() == [[2, 5, 5, 5, 3, 6, 6, 3], [2, 5, 3, 6, 6, 6, 6, 3], [2, 5, 6, 3, 0, 0, 0, 0]]
    assert seg.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1], [0] * 8]
    assert att.tolist() == [[1] * 8, [1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]


def tiny(bt, **kw):
    return bt.BertConfig(**{"block_size": 20, "vocab_size": 40, "n_layer": 2, "n_head": 3, "n_embd": 12, "n_inner": 20,
                            "dropout": 0.0, **kw})  # fmt: skip


def test_padding_changes_nothing_at_real_tokens(bt):
    """With the attention mask, whatever stands at padded positions (tokens, segments) leaves the MLM logits at real
    tokens and the NSP logits unchanged; without the mask it changes them."""
    torch.manual_seed(0)
    model = redraw(bt.Bert(tiny(bt)).double(), 0.3).eval()
    ids, seg, mask = padded_inputs(40)
    other_ids, other_seg = ids.clone(), seg.clone()
    pad = mask == 0
    other_ids[pad], other_seg[pad] = torch.randint(5, 40, (int(pad.sum()),)), 1
    mlm, nsp = model(ids, seg, mask)
    mlm2, nsp2 = model(other_ids, other_seg, mask)
    assert rel_error(mlm2[~pad], mlm[~pad]) < 1e-13 and rel_error(nsp2, nsp) < 1e-13
    no_mask = model(other_ids, other_seg)[0]
    assert rel_error(no_mask[~pad], mlm[~pad]) > 1e-4


def test_hand_attention_equals_sdpa(bt):
    """With a padding mask, F.scaled_dot_product_attention gives the hand-written path's logits and gradients."""
    out = []
    for sdpa in (False, True):
        torch.manual_seed(0)
        model = redraw(bt.Bert(tiny(bt, sdpa=sdpa)).double(), 0.3)
        ids, seg, mask = padded_inputs(40)
        mlm, nsp = model(ids, seg, mask)
        (mlm[mask.bool()].logsumexp(-1).sum() + nsp.logsumexp(-1).sum()).backward()
        out.append([mlm[mask.bool()], nsp, *(w.grad for w in model.parameters())])
    for a, b in zip(*out):  # the key bias's gradient is 0 in exact arithmetic (softmax ignores a shift): 1e-16 here
        assert rel_error(a, b) < 1e-10 or (a - b).abs().max() < 1e-14


def test_mlm_positions_gather_the_chosen_logits(bt):
    """forward(..., mlm_positions) gives the full MLM logits at those positions only."""
    torch.manual_seed(0)
    model = redraw(bt.Bert(tiny(bt)).double(), 0.3).eval()
    ids, seg, mask = padded_inputs(40)
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    assert rel_error(model(ids, seg, mask, chosen)[0], model(ids, seg, mask)[0][chosen]) < 1e-14


def test_post_ln_blocks_end_normalised(bt):
    """Post-LN: every block ends with a LayerNorm, so at initialisation each hidden state has mean 0 and variance
    1 over its features even with large branches; a pre-LN block would leave the residual stream unnormalised."""
    torch.manual_seed(0)
    model = bt.Bert(tiny(bt, n_embd=24)).double()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.output.dense.weight.mul_(50)
            layer.output.dense.weight.mul_(50)
    h = model.bert(torch.randint(0, 40, (2, 20)))[0]
    assert h.mean(-1).abs().max() < 1e-12 and (h.var(-1, unbiased=False) - 1).abs().max() < 1e-8


def test_pretrain_loss_is_mlm_plus_nsp(bt):
    """pretrain_loss: cross-entropy over the chosen positions only, plus the NSP cross-entropy, computed here apart."""
    torch.manual_seed(0)
    model = redraw(bt.Bert(tiny(bt)).double(), 0.3).eval()
    ids, seg, mask = padded_inputs(40)
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100).masked_fill(mask == 0, -100)
    b = {"input_ids": ids, "token_type_ids": seg, "attention_mask": mask, "mlm_labels": labels,
         "nsp_labels": torch.tensor([0, 1, 1])}  # fmt: skip
    loss, mlm, nsp, right = bt.pretrain_loss(model, b)
    logits, nsp_logits = model(ids, seg, mask)
    mlm_ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    nsp_ref = F.cross_entropy(nsp_logits, b["nsp_labels"])
    assert loss.item() == pytest.approx(mlm_ref.item() + nsp_ref.item(), rel=1e-12)
    assert mlm.item() == pytest.approx(mlm_ref.item(), rel=1e-12) and right[1] == (labels >= 0).sum()


def test_schedule(bt):
    """Linear warm-up to lr over 10 steps, then linear decay: half-way at step 55, towards 0 at 100."""
    lr = lambda it: bt.get_lr(it, 1e-3, 10, 100)
    assert lr(0) == pytest.approx(1e-4) and lr(9) == pytest.approx(1e-3) and lr(10) == pytest.approx(1e-3)
    assert lr(55) == pytest.approx(5e-4) and lr(99) == pytest.approx(1e-3 / 90) and lr(100) == 0
    assert all(lr(i) > lr(i + 1) for i in range(10, 100))


def test_replaced_word_task(bt):
    """Label 1: the sentence as it is; 0: exactly one token replaced by another word (never a special token);
    sentences over max_len tokens are left out; on PTB's test split the labels are balanced (5 sigma), each
    sentence is used once, and the replacements are spread over the vocabulary."""
    tok = bt.Words(SPECIALS + list("abcde"))
    sents = [list("abcd"), list("aaaaaaa"), list("e"), list("abcdeabcde"), list("cba")] * 40
    task = bt.replaced_word_task(sents, tok, 6, np.random.default_rng(0))
    kept = [s for s in sents if len(s) <= 6]
    assert len(task) == len(kept) and {y for _, y in task} == {0, 1}
    for (ids, y), s in zip(task, kept):
        orig = tok.encode(" ".join(s))
        diff = [t for t in range(len(ids)) if ids[t] != orig[t]]
        assert len(ids) == len(orig) and len(diff) == 1 - y and all(i >= 5 for i in ids)
    test = ptb_sentences("test")
    vocab = bt.build_vocab(ptb_sentences("train"))
    real = bt.replaced_word_task(test, vocab, 62, np.random.default_rng(1))
    assert len(test) - 30 < len(real) <= len(test)
    assert abs(sum(y for _, y in real) - len(real) / 2) < 5 * math.sqrt(len(real) / 4)
    sources = [vocab.encode(" ".join(s)) for s in test if len(s) <= 62]
    new_words = []
    for (ids, y), orig in zip(real, sources, strict=True):
        diff = [t for t in range(len(ids)) if ids[t] != orig[t]]
        assert len(diff) == 1 - y
        new_words += [ids[t] for t in diff]
    assert len(set(new_words)) > 0.8 * len(new_words) and min(new_words) >= 5


# %% real data


@pytest.fixture(scope="module")
def smoke(bt, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, bt.main(["--smoke", "--out-dir", str(out)])


def test_smoke_run(bt, smoke):
    """Pre-training lowers the MLM and total losses on held-out pairs; accuracies in range; predictions for every
    example; fine-tuning ran for the pre-trained and the scratch model alike; the files are written."""
    out, m = smoke
    h = m["history"]["pretrain"]
    assert h["iter"] == [30, 60] and h["val_mlm_loss"][-1] < h["val_mlm_loss"][0] < math.log(10003) + 0.5
    assert h["train_mlm_loss"][-1] < h["train_mlm_loss"][0] and m["mlm_loss"] == pytest.approx(h["val_mlm_loss"][-1])
    assert 0.02 < m["mlm_acc"] < 0.5 and 0.3 < m["nsp_acc"] < 0.8 and m["nsp_loss"] < 0.75
    assert 0.03 < m["mlm_unigram_acc"] < 0.1  # "the" is about one PTB word in twenty
    for k in ("finetune_test_acc", "scratch_test_acc", "majority_acc"):
        assert 0.3 < m[k] < 0.8
    steps = math.ceil(m["n_task_train"] / 32)
    assert len(m["history"]["finetune"]) == len(m["history"]["scratch"]) == steps and m["n_task_test"] > 240
    assert list(m["predictions"]) == bt.EXAMPLES and all(len(top) == 5 for top in m["predictions"].values())
    assert m["params_presets"] == {"bert-base": 110_106_428, "bert-large": 336_226_108} and m["vocab_size"] == 10003
    assert {"metrics.json", "checkpoint.pt", "bert.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text())["mlm_acc"] == m["mlm_acc"]


def test_ctrl_c_then_resume_equals_uninterrupted(bt, smoke, tmp_path, monkeypatch, capsys):
    """Ctrl-C at step 31 exits 130 naming the checkpoint of step 30 and the --resume command; --resume then gives
    the uninterrupted run's history; a changed setting is refused; --fill-mask reads the checkpoint."""
    _, m = smoke
    real = bt.get_lr

    def ctrl_c_at_30(it, *args):
        if it == 30:
            raise KeyboardInterrupt
        return real(it, *args)

    monkeypatch.setattr(bt, "get_lr", ctrl_c_at_30)
    argv = ["--smoke", "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        bt.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "holds step 30" in err and err.rstrip().endswith("--resume")
    monkeypatch.setattr(bt, "get_lr", real)
    resumed = bt.main([*argv, "--resume"])
    assert resumed["history"]["pretrain"] == m["history"]["pretrain"] and resumed["mlm_acc"] == m["mlm_acc"]
    with pytest.raises(SystemExit) as exc:
        bt.main([*argv, "--resume", "--lr", "0.5"])
    assert exc.value.code == 2 and "--lr 0.002 -> 0.5" in capsys.readouterr().err
    out = bt.main(["--fill-mask", bt.EXAMPLES[0], "--out-dir", str(tmp_path)])
    assert out["predictions"] == [m["predictions"][bt.EXAMPLES[0]]]


def test_fine_tune_released_weights_smoke(bt, tmp_path):
    """--init-from skips pre-training: the Hugging Face model and its WordPiece go to the held-out evaluation and
    the fine-tuning."""
    save_hf(tmp_path / "hf", 0.2)
    m = bt.main(["--smoke", "--init-from", str(tmp_path / "hf"), "--out-dir", str(tmp_path / "run")])
    assert m["history"]["pretrain"]["iter"] == [] and m["vocab_size"] == len(VOCAB) and m["params"] < 10_000
    assert 0 <= m["mlm_acc"] <= 1 and 0 <= m["finetune_test_acc"] <= 1 and len(m["history"]["scratch"]) > 0


def test_missing_data_is_one_line(bt, missing_data_error):
    assert "ptb" in missing_data_error(bt.main)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--n-embd", "30", "--n-head", "4"], "--n-embd"),
        (["--warmup-iters", "60", "--max-iters", "60"], "--warmup-iters"),
        (["--init-from", "/no/such/folder"], "--init-from"),
        (["--fill-mask", "no mask here"], "--fill-mask"),
        (["--mask-prob", "1"], "--mask-prob"),
        (["--block-size", "4"], "--block-size"),
        (["--resume", "--out-dir", "/no/such/run"], "--resume"),
        (["--batch-size", "0"], "--batch-size"),
        (["--ft-lr", "0"], "--ft-lr"),
    ],
)
def test_bad_flags(bt, usage_error, argv, flag):
    assert flag in usage_error(bt, argv, loader="ptb_sentences")
