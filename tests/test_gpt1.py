"""Tests of 06-transformers/gpt1_torch.py, GPT-1 with its two stages (pre-training, fine-tuning).

The model against Hugging Face's OpenAIGPTLMHeadModel at a tiny random configuration, saved with
save_pretrained and loaded through GPT.from_hf: equal logits in float32 (relative error
max|a-b| / (max|a| + max|b|) <= 1e-5) and float64 (<= 1e-10), at Hugging Face's initialisation and with
every weight redrawn at std 0.2 (at std 0.02 the pre-activations are too small for a wrong GELU to show
in float32), and equal greedy generations, also through `main(["--init-from", ..., "--sample"])`. This
equality is also what pins post-LN (a pre-LN block, a missing Conv1D transpose or an erf GELU breaks it).
Then: GPT-1's BPE against Hugging Face's OpenAIGPTTokenizer, hand attention against SDPA, causality, the
preset's parameter count on the meta device, the schedule, the speaker task, L3 = L2 + lambda L1, and
smoke runs on the real text (stage 1, stage 2, --resume, --sample, --init-from, bad flags).
"""

import copy
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from gradcheck import rel_error

from data import tinyshakespeare

# A tiny GPT-1 BPE vocabulary: each symbol alone and word-final, a few merges, <unk>.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789,.:;!?'-_"
MERGES = [("t", "h"), ("th", "e</w>"), ("o", "u</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("e", "r</w>"),
          ("in", "g</w>"), ("o", "r"), ("e", "n"), ("th", "ou</w>"), ("o", "u"), ("h", "e</w>")]  # fmt: skip
VOCAB = {}
for c in ALPHABET:
    VOCAB.setdefault(c, len(VOCAB))
    VOCAB.setdefault(c + "</w>", len(VOCAB))
for a, b in MERGES:
    VOCAB.setdefault(a + b, len(VOCAB))
VOCAB["<unk>"] = len(VOCAB)
TEXT = "ROMEO:\nThe Duke's daughter -- and thou, café_x 42 singing? Éh£ Thou thoughtest (or ought) another."


@pytest.fixture(scope="module")
def g1(load_script):
    return load_script("06-transformers/gpt1_torch.py")


def tiny_config(g1, **kw):
    return g1.GPTConfig(**{"block_size": 16, "vocab_size": 23, "n_layer": 2, "n_head": 3, "n_embd": 12,
                           "dropout": 0.0, **kw})  # fmt: skip


def redraw(model, std=0.2, seed=0):
    """Every weight to N(0, std^2), LayerNorm gains to 1 + N(0, std^2): activations of order one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            noise = torch.randn(w.shape, generator=g, dtype=w.dtype) * std
            w.copy_(1 + noise if ".ln_" in name and name.endswith("weight") else noise)
    return model


def save_hf(folder, std=None):
    """A random OpenAIGPTLMHeadModel (no dropout) saved with save_pretrained, with VOCAB and MERGES beside it."""
    config = transformers.OpenAIGPTConfig(vocab_size=len(VOCAB), n_positions=32, n_embd=12, n_layer=2, n_head=3,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.OpenAIGPTLMHeadModel(config).eval()
    if std is not None:
        redraw(hf, std)
    hf.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return hf


@pytest.fixture(scope="module", params=["hf_init", "std_0.2"])
def hf_pair(request, tmp_path_factory):
    """(folder, the Hugging Face model saved in it), at HF's initialisation and with weights redrawn at std 0.2."""
    folder = tmp_path_factory.mktemp(request.param)
    return folder, save_hf(folder, None if request.param == "hf_init" else 0.2)


def test_gpt1_preset_has_the_paper_parameter_count(g1):
    """gpt1: 116,534,784 parameters with the output tied to the token embedding, on the meta device; the count
    by hand: V C + 512 C + 12 (4 C^2 + 4 C  +  8 C^2 + 5 C  +  4 C)."""
    with torch.device("meta"):
        model = g1.GPT(g1.PRESETS["gpt1"])
    V, T, C, L = 40478, 512, 768, 12
    assert (model.config.vocab_size, model.config.block_size, model.config.n_layer, model.config.n_embd) == (V, T, L, C)
    assert model.config.n_head == 12 and model.config.bias
    assert model.lm_head.weight is model.tokens_embed.weight
    block = (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C) + 2 * 2 * C
    assert sum(w.numel() for w in model.parameters()) == V * C + T * C + L * block == 116_534_784


def test_logits_equal_hugging_face(g1, hf_pair):
    """GPT.from_hf(folder) gives Hugging Face's logits: float32 relative error <= 1e-5, float64 <= 1e-10."""
    folder, hf = hf_pair
    ours = g1.GPT.from_hf(folder).eval()
    assert ours.lm_head.weight is ours.tokens_embed.weight
    idx = torch.randint(0, len(VOCAB), (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_error(ours(idx)[0], hf(idx).logits) < 1e-5
        ref64 = copy.deepcopy(hf).double()(idx).logits
        ours64 = ours.double()(idx)[0]
    assert ours64.dtype == torch.float64 and rel_error(ours64, ref64) < 1e-10
    assert ref64.abs().max() > (1.0 if "std" in folder.name else 0.05)  # the redrawn weights give large logits


def test_greedy_generation_equals_hugging_face(g1, hf_pair, tmp_path):
    """Greedy decoding (temperature 0) gives Hugging Face's generate(do_sample=False) tokens; so does
    main(["--init-from", folder, "--sample", "--top-k", "1"]), which also encodes the prompt with GPT-1's BPE."""
    folder, hf = hf_pair
    ours = g1.GPT.from_hf(folder).eval()
    prompt = torch.tensor([[3, 17, 40, 8], [60, 2, 2, 31]])
    ref = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 20, temperature=0), ref)
    if "std" in folder.name:
        assert len(set(ref[:, 4:].flatten().tolist())) > 1  # not one token repeated
    out = g1.main(["--init-from", str(folder), "--sample", "--prompt", "the duke, and thou", "--top-k", "1",
                   "--sample-len", "12", "--out-dir", str(tmp_path)])  # fmt: skip
    ids = g1.GPT1BPE(folder).encode("the duke, and thou")
    assert out["ids"] == hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0].tolist()
    assert out["sample"].startswith("the duke , and thou")


def test_generation_crops_its_context_to_block_size(g1):
    """Past block_size tokens, each new token is the argmax of the logits of the last block_size tokens alone."""
    torch.manual_seed(0)
    model = redraw(g1.GPT(tiny_config(g1)), 0.3).eval()
    out = model.generate(torch.tensor([[1, 2, 3]]), 30, temperature=0)
    assert out.shape == (1, 33)
    for t in range(16, 33):
        assert out[0, t] == model(out[:, t - 16 : t])[0][0, -1].argmax()


def test_sampling_keeps_to_the_top_k(g1):
    """With top_k 2 every sampled token is one of the two likeliest after its context."""
    torch.manual_seed(0)
    model = redraw(g1.GPT(tiny_config(g1)), 0.3).eval()
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), 12, temperature=1.5, top_k=2)
    for t in range(1, 13):
        top2 = model(out[:, :t])[0][:, -1].topk(2).indices
        assert (top2 == out[:, t : t + 1]).any(dim=1).all()


def test_bpe_equals_hugging_face_tokenizer(g1, tmp_path):
    """GPT1BPE encodes as OpenAIGPTTokenizer (lower case, accents stripped, punctuation split off, merges in
    rank order, unknown symbols as <unk>) and decodes as it does."""
    save_hf(tmp_path)
    ref = transformers.OpenAIGPTTokenizer(vocab=VOCAB, merges=MERGES)
    ours = g1.GPT1BPE(tmp_path)
    ids = ours.encode(TEXT)
    assert ids == ref.encode(TEXT, add_special_tokens=False)
    assert ours.decode(ids) == ref.decode(ids)
    assert VOCAB["thou</w>"] in ids and VOCAB["<unk>"] in ids and len(ours) == len(VOCAB)


def test_hand_attention_equals_sdpa(g1):
    """The whole model with F.scaled_dot_product_attention gives the hand-written path's logits and gradients."""
    out = []
    for sdpa in (False, True):
        torch.manual_seed(0)
        model = redraw(g1.GPT(tiny_config(g1, sdpa=sdpa)).double(), 0.3)
        idx = torch.randint(0, 23, (3, 16), generator=torch.Generator().manual_seed(2))
        logits, loss = model(idx, torch.roll(idx, -1, 1))
        loss.backward()
        out.append([logits, *(w.grad for w in model.parameters())])
    for a, b in zip(*out):
        assert rel_error(a, b) < 1e-10


def test_causal(g1):
    """Changing the tokens after position t changes no logit at positions <= t, and does change later ones."""
    torch.manual_seed(0)
    model = redraw(g1.GPT(tiny_config(g1)).double(), 0.3)
    idx = torch.randint(0, 23, (2, 16), generator=torch.Generator().manual_seed(3))
    logits = model(idx)[0]
    for t in range(15):
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 5) % 23
        new = model(changed)[0]
        assert rel_error(new[:, : t + 1], logits[:, : t + 1]) < 1e-14
        assert rel_error(new[:, t + 1 :], logits[:, t + 1 :]) > 1e-6


def test_post_ln_blocks_end_normalised(g1):
    """Post-LN: every block ends with a LayerNorm, so at initialisation (gains 1, biases 0) each hidden state has
    mean 0 and variance 1 over its features; a pre-LN block would leave the residual stream unnormalised."""
    torch.manual_seed(0)
    model = g1.GPT(tiny_config(g1, n_embd=24)).double()
    with torch.no_grad():
        for block in model.h:  # large branches, so a missing normalisation cannot hide
            block.attn.c_proj.weight.mul_(50)
            block.mlp.c_proj.weight.mul_(50)
    h = model.hidden(torch.randint(0, 23, (2, 16)))
    assert h.mean(-1).abs().max() < 1e-12
    assert (h.var(-1, unbiased=False) - 1).abs().max() < 1e-4  # LayerNorm's eps 1e-5


def test_init_is_normal_002_and_the_output_is_tied(g1):
    """Every matrix and embedding starts N(0, 0.02), biases 0; the logits are h_n W_e^T."""
    torch.manual_seed(0)
    model = g1.GPT(g1.GPTConfig(n_embd=64, n_layer=2))
    for name, w in model.named_parameters():
        if w.dim() == 2:
            assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002, name
        elif "ln_" not in name:
            assert torch.all(w == 0), name
    idx = torch.randint(0, 65, (2, 10))
    assert rel_error(model.eval()(idx)[0], model.hidden(idx) @ model.tokens_embed.weight.T) < 1e-6


def test_add_tokens_keeps_the_model_and_ties(g1):
    """add_tokens(2) leaves the logits of the old tokens unchanged and the output tied."""
    torch.manual_seed(0)
    model = redraw(g1.GPT(tiny_config(g1)).double(), 0.3)
    idx = torch.randint(0, 23, (2, 16))
    before = model(idx)[0]
    model.add_tokens(2)
    after = model(idx)[0]
    assert after.shape[-1] == 25 and model.config.vocab_size == 25 and model.lm_head.weight is model.tokens_embed.weight
    assert rel_error(after[..., :23], before) < 1e-14


def test_schedule(g1):
    """Linear warm-up to lr, half-way down the cosine at its middle, min_lr at lr_decay_iters and after."""
    lr = lambda it: g1.get_lr(it, 1e-3, 1e-4, 10, 110)
    assert lr(0) == pytest.approx(1e-3 / 11) and lr(9) == pytest.approx(1e-3 * 10 / 11)
    assert lr(10) == pytest.approx(1e-3) and lr(60) == pytest.approx(5.5e-4)
    assert lr(110) == lr(500) == pytest.approx(1e-4)
    assert all(lr(i) > lr(i + 1) for i in range(10, 110))


def test_speaker_task_on_a_small_play(g1):
    """The classes are the speakers with most speeches; every second speech of each is a test example, the others
    train; empty speeches and other speakers are left out; taking out the cut spans removes just the test blocks."""
    text = "A:\na1\n\nB:\nb1\n\nC:\nc1\n\nA:\na2\n\nB:\n\nB:\nb2\n\nA:\na3\n\nC:\nc2\n\nB:\nb3\n\nA:\na4\n\nB:\nb4"
    classes, split, cut = g1.speaker_task(text, 2)
    assert classes == ["A", "B"]  # A 4, B 4 (and one empty), C 2; ties in order of first appearance
    assert split["test"] == [("a2", 0), ("b2", 1), ("a4", 0), ("b4", 1)]
    assert split["train"] == [("a1", 0), ("b1", 1), ("a3", 0), ("b3", 1)]
    assert [text[s:e] for s, e in cut] == ["A:\na2\n\n", "B:\nb2\n\n", "A:\na4\n\n", "B:\nb4"]
    assert g1.without(text, cut) == "A:\na1\n\nB:\nb1\n\nC:\nc1\n\nB:\n\nA:\na3\n\nC:\nc2\n\nB:\nb3\n\n"
    assert g1.without(text[:25], cut) == text[:21]  # a prefix that ends inside a span


def test_speaker_task_on_tiny_shakespeare(g1):
    """On the real text: five classes led by GLOUCESTER, each in train and test, no empty speech, half of each
    class's speeches in test, the cut spans exactly the test speeches' blocks, the same split on every call."""
    text = tinyshakespeare()
    classes, split, cut = g1.speaker_task(text, 5)
    assert classes[0] == "GLOUCESTER" and len(classes) == 5
    for name, examples in split.items():
        assert {lab for _, lab in examples} == set(range(5)), name
        assert all(said.strip() and not said.startswith("\n") for said, _ in examples)
    counts = Counter(who for who, *_ in g1.speeches(text) if who in classes)
    assert len(split["test"]) == sum(n // 2 for n in counts.values()) and len(split["train"]) > 400
    blocks = [text[s:e].removesuffix("\n\n").partition("\n") for s, e in cut]
    assert [body for _, _, body in blocks] == [said for said, _ in split["test"]]
    assert [classes.index(head[:-1]) for head, _, _ in blocks] == [lab for _, lab in split["test"]]
    assert len(g1.without(text, cut)) == len(text) - sum(e - s for s, e in cut)
    assert g1.speaker_task(text, 5) == (classes, split, cut)


def test_task_tensors_frame_start_text_extract(g1):
    """x = <s> text <e> padded, y the text tokens at the positions that predict them, last at <e>."""
    tok = g1.Chars("abc")
    t = g1.task_tensors([("abca", 1), ("c", 0), ("abcabc", 2)], tok, 3, 4, 6)
    assert t["x"].tolist() == [[3, 0, 1, 2, 0, 4], [3, 2, 4, 0, 0, 0], [3, 0, 1, 2, 0, 4]]
    assert t["y"].tolist() == [[0, 1, 2, 0, -1, -1], [2, -1, -1, -1, -1, -1], [0, 1, 2, 0, -1, -1]]
    assert t["last"].tolist() == [5, 2, 5] and t["label"].tolist() == [1, 0, 2]


def test_l3_is_l2_plus_lambda_l1(g1):
    """l3's loss is the classification cross-entropy at <e> plus lm_coef times the language-model loss of the
    text tokens, each computed here independently."""
    torch.manual_seed(0)
    model = redraw(g1.GPT(tiny_config(g1)).double(), 0.3).eval()
    head = torch.nn.Linear(12, 3).double()
    t = g1.task_tensors([("abca", 1), ("c", 0), ("abcab", 2)], g1.Chars("abc"), 3, 4, 8)
    loss, clf, lm = g1.l3(model, head, t, 0.5, 0.0)
    logits = model(t["x"])[0]
    mask = t["y"] >= 0
    lm_ref = -F.log_softmax(logits, -1)[mask].gather(1, t["y"][mask][:, None]).mean()
    h = model.hidden(t["x"])[torch.arange(3), t["last"]]
    clf_ref = -F.log_softmax(head(h), -1)[torch.arange(3), t["label"]].mean()
    assert clf.item() == pytest.approx(clf_ref.item(), rel=1e-12)
    assert lm.item() == pytest.approx(lm_ref.item(), rel=1e-12)
    assert loss.item() == pytest.approx(clf_ref.item() + 0.5 * lm_ref.item(), rel=1e-12)


def test_from_hf_refuses_another_model(g1, tmp_path):
    """A folder of another activation is refused by from_hf, and by main in one line."""
    save_hf(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "afn": "relu"}))
    with pytest.raises(ValueError, match="afn relu"):
        g1.GPT.from_hf(tmp_path)
    with pytest.raises(SystemExit) as exc:
        g1.main(["--init-from", str(tmp_path), "--sample", "--out-dir", str(tmp_path / "run")])
    assert str(exc.value.code).startswith("error: --init-from") and "not GPT-1" in exc.value.code


# %% real data


@pytest.fixture(scope="module")
def smoke(g1, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, g1.main(["--smoke", "--out-dir", str(out)])


def test_smoke_run(g1, smoke):
    """Stage 1 lowers the losses on text without the test speeches; stage 2 runs twice; accuracies in [0, 1]; the
    files are written."""
    out, m = smoke
    pre = m["history"]["pretrain"]
    assert pre["iter"] == [30, 60] and pre["val_loss"][-1] < pre["val_loss"][0] < math.log(65) + 0.5
    assert pre["train_loss"][-1] < pre["train_loss"][0] and m["val_loss"] == pytest.approx(pre["val_loss"][-1])
    for k in ("finetune_test_acc", "scratch_test_acc", "majority_acc"):
        assert 0 <= m[k] <= 1
    assert m["majority_acc"] == pytest.approx(105 / 199) and m["classes"] == ["GLOUCESTER", "DUKE VINCENTIO"]
    assert m["n_task_test"] == 199 and m["params_gpt1"] == 116_534_784
    text = tinyshakespeare()  # stage 1 reads the first 90% without the test speeches
    assert m["train_tokens"] == len(g1.without(text[: int(0.9 * len(text))], g1.speaker_task(text, 2)[2]))
    scratch = m["history"]["scratch"]["lm_loss"]
    assert np.mean(scratch[-3:]) < np.mean(scratch[:3])  # L1 is minimised during stage 2 as well
    assert {"metrics.json", "checkpoint.pt", "gpt1.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text())["finetune_test_acc"] == m["finetune_test_acc"]


def test_resume_and_sample(g1, smoke, tmp_path, capsys):
    """30 steps, then --resume to 60, give the uninterrupted run's losses; a changed setting is refused;
    --sample continues a prompt from the checkpoint."""
    _, m = smoke
    argv = ["--smoke", "--out-dir", str(tmp_path), "--lr-decay-iters", "60"]
    g1.main([*argv, "--max-iters", "30"])
    resumed = g1.main([*argv, "--resume", "--max-iters", "60"])
    assert resumed["history"]["pretrain"] == m["history"]["pretrain"]
    with pytest.raises(SystemExit) as exc:
        g1.main([*argv, "--resume", "--lr", "0.5"])
    assert exc.value.code == 2 and "--lr 0.001 -> 0.5" in capsys.readouterr().err
    out = g1.main(["--sample", "--out-dir", str(tmp_path), "--prompt", "KING:", "--sample-len", "20"])
    assert out["sample"].startswith("KING:") and len(out["ids"]) == 25


def test_fine_tune_released_weights_smoke(g1, tmp_path):
    """--init-from skips stage 1: the Hugging Face model, its BPE and its 32 positions go to stage 2."""
    save_hf(tmp_path / "hf", 0.2)
    m = g1.main(["--smoke", "--init-from", str(tmp_path / "hf"), "--out-dir", str(tmp_path / "run")])
    assert m["history"]["pretrain"]["iter"] == [] and m["model_config"]["vocab_size"] == len(VOCAB)
    assert np.isfinite(m["val_loss"]) and 0 <= m["finetune_test_acc"] <= 1 and 0 <= m["scratch_test_acc"] <= 1


def test_missing_data_is_one_line(g1, missing_data_error):
    assert "tinyshakespeare" in missing_data_error(g1.main)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--n-embd", "30", "--n-head", "4"], "--n-embd"),
        (["--warmup-iters", "50", "--lr-decay-iters", "50"], "--lr-decay-iters"),
        (["--min-lr", "0.1"], "--min-lr"),
        (["--init-from", "/no/such/folder"], "--init-from"),
        (["--lm-coef", "-1"], "--lm-coef"),
        (["--n-speakers", "0"], "--n-speakers"),
        (["--resume", "--out-dir", "/no/such/run"], "--resume"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_flags(g1, usage_error, argv, flag):
    assert flag in usage_error(g1, argv, loader="tinyshakespeare")
