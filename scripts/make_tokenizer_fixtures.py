#!/usr/bin/env python3
# make_tokenizer_fixtures.py: writes Tests/TokenizersTests/Fixtures/tokenizer_expected.json, the ids that Hugging
# Face's `tokenizers` library gives for a fixed set of sample strings with the two small tokenizer.json files
# that SwiftPEFT's own BPE trainer wrote (tokenizer_gpt2.json, tokenizer_digits.json), and with a third one that
# `tokenizers` itself trains here (tokenizer_hf_trained.json: SmolLM2's layout, special tokens at ids 0-2 and a
# Digits + ByteLevel pre-tokenizer), so the Swift loader is also checked on a file written by Hugging Face.
# TokenizerTests checks that BPETokenizer loads each file and encodes every sample to exactly these ids.
# A fourth file (tokenizer_flags.json) is the third with added tokens that use the AddedToken flags
# (lstrip, rstrip, single_word, normalized); its own samples and ids are under "flags".
#
# Re-run from the package root (deterministic: two runs give byte-identical JSON):
#
#     scripts/make-venv    # once: .venv with tokenizers, torch, transformers, peft (fixture tools only)
#     RECORD_TOKENIZER_FIXTURES=1 swift test --filter TokenizerTests/testFixtureTokenizersAreReproducible
#                                      # only when the trainer or tokenizer_corpus.txt changed
#     .venv/bin/python scripts/make_tokenizer_fixtures.py
#
# The build and the tests never need Python; only re-recording does.

import json
import os
import random
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "Tests", "TokenizersTests", "Fixtures"))
OUT_PATH = os.path.join(FIXTURES, "tokenizer_expected.json")
TOKENIZERS = {"gpt2": "tokenizer_gpt2.json", "digits": "tokenizer_digits.json", "hf": "tokenizer_hf_trained.json"}
FLAGS_FILE = "tokenizer_flags.json"

# Text around added tokens with flags: whitespace of several kinds taken in by lstrip / rstrip (but not
# past the previous token), single_word tokens inside and outside words (ASCII, accented, CJK, digits,
# underscore), a normalized token ("xy", second pass) overlapping a non-normalized one ("yz", first), and
# a token ("\n\n") inside whitespace an rstrip took (tokenizers matches it again from the match's end).
FLAG_SAMPLES = [
    "I saw a <mask> here", "a   <mask>", "<mask>start", "x\t\n <mask>", "<|im_end|>  <mask>", "<mask> <mask>",
    "A[R]   b", "[R]\n\nend", "[R]", "q <both>  r", " <both> ", "<both><both>", "a <both>\u00a0\u3000x",
    "word", "a word here", "words", "sword", "a word_ b", "word's", "h\u00e9word", "word\u00e9", "\u65e5\u672cword",
    "2word", "(word)", "word-word", "wxyz", "xy yz xyz", "\u00a0<mask>", "\u3000<both>\u2028x", "e\u0301word",
    "a <mask>[R] b", "word <mask>", "<mask>", "[R]\n\n\nend", "<both>\n\n\n x", "a\n\n<mask>",
]

SAMPLES = [
    "Hello world! The year 2024 was great.",
    "The tokenizer reads text as bytes. It doesn't know words, but it learns them.",
    "def train(model, data, steps=1000, lr=3e-4):\n    for step in range(steps):\n        loss = model(batch)\n\tif x:\n\t\treturn",
    "Numbers: 2024, 3.14159, 1,000,000, 12:30:45, -42, +1e-9, 007, 1234567890",
    "multiple   spaces    here\n\n\nand newlines\r\n\r\nand  \t tabs \t\t",
    "it's, don't, we're, they've, I'm, we'll, he'd, IT'S, o'clock, 'tis, ''s, rock'n'roll",
    "trailing spaces   ",
    "   leading spaces",
    " ",
    "\n",
    "",
    "a",
    "Café naïve résumé façade Ångström, e\u0301 (combining), n\u0303",
    "日本語のテキスト、中文：你好，世界！한국어 텍스트",
    "Русский текст, Ελληνικά, עברית, العربية",
    "Emoji: 😀 👍🏽 🇺🇸 ❤️ 🎉🎉🎉 — ≤ ≥ ≠ ∞ → © ® ™ € £ ¥",
    "Special <|endoftext|> token, twice<|endoftext|><|endoftext|>and glued<|endoftext|>x",
    "Unicode spaces:\u00a0nbsp,\u3000ideographic,\u2028line sep,\u2003em space, \u0085next line",
    "Other numerals: ٣ (Arabic-Indic), ४ (Devanagari), Ⅻ (Roman), ½ ² ①, and letters x٣y",
    "control chars: \x00\x01\x07\x1b[0m\x7f end",
    "!!!??? ... --- ((())) [[[]]] {{{}}} <<<>>> ### @@@ $$$ %%% ^^^ &&& *** ___ +++ === ~~~ ||| \\\\ //",
    " " * 150 + "x" + "-" * 140 + "\n" * 20,
    "The the THE tHe. We'll well. Don't dont. Le modèle apprend à lire. Größe, Übung, Straße.",
]


def random_strings(seed, count):
    """Deterministic random strings mixing scripts, digits, whitespace, marks and emoji (stable Unicode ranges)."""
    rng = random.Random(seed)
    pools = [
        [chr(c) for c in range(0x20, 0x7F)],
        list(" \t\n\r\u00a0\u3000\u2028"),
        [chr(c) for c in range(0xC0, 0x100)],
        [chr(c) for c in range(0x300, 0x340)],
        [chr(c) for c in range(0x391, 0x3CA)],
        [chr(c) for c in range(0x410, 0x450)],
        [chr(c) for c in range(0x4E00, 0x4E80)],
        [chr(c) for c in range(0x1F600, 0x1F640)],
        list("0123456789٠١٢٣٤"),
        list("'s't're've'm'll'd"),
    ]
    out = []
    for _ in range(count):
        n = rng.randrange(1, 40)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    return out


def train_hf_tokenizer():
    """A 400-token byte-level BPE trained by `tokenizers` on the fixture corpus, laid out like SmolLM2's."""
    with open(os.path.join(FIXTURES, "tokenizer_corpus.txt"), encoding="utf-8") as f:
        corpus = f.read()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus], trainer)
    tok.save(os.path.join(FIXTURES, TOKENIZERS["hf"]), pretty=True)


def write_flags_tokenizer():
    """tokenizer_hf_trained.json with added tokens that use every AddedToken flag."""
    tok = Tokenizer.from_file(os.path.join(FIXTURES, TOKENIZERS["hf"]))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tok.add_tokens([
        AddedToken("[R]", rstrip=True, normalized=False),
        AddedToken("<both>", lstrip=True, rstrip=True, normalized=False),
        AddedToken("word", single_word=True, normalized=False),
        AddedToken("xy", normalized=True),
        AddedToken("yz", normalized=False),
        AddedToken("\n\n", normalized=False),  # starts in whitespace that an rstrip takes
    ])
    tok.save(os.path.join(FIXTURES, FLAGS_FILE), pretty=True)
    return tok


def main():
    train_hf_tokenizer()
    flags = write_flags_tokenizer()
    samples = SAMPLES + random_strings(20240615, 16)
    dump = lambda x: json.dumps(x, ensure_ascii=True, separators=(",", ":"))
    lines = ["{", ' "samples": [', ",\n".join("  " + dump(s) for s in samples), " ],"]
    for k, (name, file) in enumerate(sorted(TOKENIZERS.items())):
        path = os.path.join(FIXTURES, file)
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: record it first (see the header of this script)")
        tok = Tokenizer.from_file(path)
        ids, pieces = [], []
        for s in samples:
            enc = tok.encode(s, add_special_tokens=False)
            ids.append(enc.ids)
            pieces.append([p for p, _ in tok.pre_tokenizer.pre_tokenize_str(s)])
            assert tok.decode(enc.ids, skip_special_tokens=False) == s, f"{file}: no round trip for {s!r}"
        lines.append(f' "{name}": {{"file": {dump(file)},')
        lines.append('  "ids": [\n' + ",\n".join("   " + dump(x) for x in ids) + "\n  ],")
        lines.append('  "pieces": [\n' + ",\n".join("   " + dump(x) for x in pieces) + "\n  ]")
        lines.append(" },")
    lines.append(f' "flags": {{"file": {dump(FLAGS_FILE)},')
    lines.append('  "samples": [\n' + ",\n".join("   " + dump(x) for x in FLAG_SAMPLES) + "\n  ],")
    lines.append('  "ids": [\n' + ",\n".join("   " + dump(flags.encode(x, add_special_tokens=False).ids) for x in FLAG_SAMPLES)
                 + "\n  ]")
    lines.append(" }")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # well-formed
    with open(OUT_PATH, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT_PATH} ({len(text)} bytes, {len(samples)} samples)")


if __name__ == "__main__":
    main()
