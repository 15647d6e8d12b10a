"""A tiny GPT-2-style tokenizer.json for the tests of --init-from (gpt2_torch.py, gpt_jax.py)."""


def byte_level_tokenizer(vocab_size):
    """A tiny GPT-2-style byte-level BPE tokenizer.json, trained offline with the `tokenizers` package."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["To be, or not to be, that is the question."] * 50, trainer)
    assert tok.get_vocab_size() == vocab_size
    return tok
