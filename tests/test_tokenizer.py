"""The torch-free CLIP tokenizer gives open_clip's tokens, id for id, on strings chosen to break it."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.encode.tokenizer import ClipTokenizer, open_clip_vocab

TRICKY = [
    "",
    " ",
    "\t\n  \r\n",
    "a red circle on a gray background",
    "A RED Circle On A Gray BACKGROUND",
    "two dogs in a frosty field",
    "   leading and trailing   whitespace   runs\t\tand\ttabs\n\nand newlines  ",
    "it's the dog's bone, isn't it? we're sure they've said I'm fine, you'll see, he'd go",
    "IT'S SHOUTING: DON'T",
    "punctuation!!! ... ?!?! (brackets) [square] {curly} <angle> #hash @at $dollar %percent ^&*",
    "numbers 0 1 12 123 3.14159 1,000,000 2024-01-31 12:30pm 1st 2nd 3rd",
    "café naïve résumé Ångström façade jalapeño coöperate",
    "caf\u00e9 vs cafe\u0301 (composed and combining accents)",
    "日本語のテキスト 中文文本 한국어 텍스트",
    "Привет мир, Ελληνικά, עברית, العربية, हिन्दी",
    "emoji 🐶🐱🦊 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 ❤️",
    "html entities &amp; &lt;b&gt; &quot;quoted&quot; &#39;apos&#39; &eacute; &amp;amp;",
    "mojibake â€œquotesâ€\u009d and Ã©",
    "fullwidth ＡＢＣ１２３ ligatures ﬁﬂ",
    "zero\u200bwidth\u200cjoiners\u200d and\u00a0nbsp",
    "control\x00chars\x07here\x1b[31m",
    "<start_of_text> and <end_of_text> typed by a user",
    "url https://example.com/a/b?c=d&e=f#g and email a.b@c.de",
    "snake_case camelCase kebab-case SCREAMING_CASE",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "word " * 100,
    "a photo of " + "really " * 60 + "long text over the context length",
    "🐶" * 80,
    "x",
    "'",
    "'s 't 're",
]


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    import open_clip

    from cbir.encode.clip import _register_bundled_configs

    _register_bundled_configs()
    return open_clip.get_tokenizer


@pytest.mark.parametrize("arch,context", [("cbir-tiny", 32), ("ViT-B-32", 77)])
def test_tokens_equal_open_clip(open_clip_tokenizer, arch, context):
    reference = open_clip_tokenizer(arch)
    ours = ClipTokenizer(open_clip_vocab(), reference.context_length)
    assert ours.context_length == context
    expected = reference(TRICKY).numpy()
    got = ours(TRICKY)
    assert got.dtype == np.int64 and got.shape == (len(TRICKY), context)
    for text, want, have in zip(TRICKY, expected, got):
        assert have.tolist() == want.tolist(), repr(text)


def test_truncation_keeps_the_end_token():
    tokens = ClipTokenizer(open_clip_vocab(), 8)(["one two three four five six seven eight nine"])
    assert tokens[0, 0] == 49406 and tokens[0, -1] == 49407
    assert (tokens[0] != 0).all()


def test_empty_batch():
    assert ClipTokenizer(open_clip_vocab(), 77)([]).shape == (0, 77)


def test_random_printable_ascii_equals_open_clip(open_clip_tokenizer):
    """ftfy is skipped for printable ASCII without "&": on such strings it must change nothing."""
    import random
    import string

    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + string.punctuation.replace("&", "") + "    "
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    texts += ['it\'s &amp; "quoted" `ticks` ~tilde~ \\back\\slash']  # with "&": through ftfy
    reference = open_clip_tokenizer("ViT-B-32")
    assert ClipTokenizer(open_clip_vocab(), 77)(texts).tolist() == reference(texts).numpy().tolist()


def test_trim_padding_cuts_after_the_longest_row():
    from cbir.encode.tokenizer import trim_padding

    tokens = ClipTokenizer(open_clip_vocab(), 77)(["a dog", "two dogs in a frosty field"])
    cut = trim_padding(tokens)
    assert cut.shape == (2, 8) and cut[1, -1] == 49407 and (cut == tokens[:, :8]).all()
    assert trim_padding(np.zeros((1, 5), np.int64)).shape == (1, 1)
