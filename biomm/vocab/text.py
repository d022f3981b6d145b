"""The text tokenizer: a BERT-style WordPiece vocabulary built from the texts at hand, or a pretrained one
from a local directory (never fetched).

With no network there is no hub tokenizer: `build_text_tokenizer` makes a WordPiece vocabulary (the
`tokenizers` library, as BERT's) from the texts at hand — the cohort's notes, label prompts, code display
names — and wraps it as a `transformers` fast tokenizer, saved with the run."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_text_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A lower-cased WordPiece tokenizer (BERT's normaliser and pre-tokeniser) for `texts`.

    The vocabulary is chosen deterministically — special tokens, every character seen (alone and as
    a `##` continuation), then whole words by frequency (ties by spelling) — because the `tokenizers`
    WordPiece trainer breaks ties in hash order, and the same data must give the same model."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({ch for word in counts for ch in word})
    vocab: list[str] = list(SPECIAL_TOKENS) + chars + [f"##{ch}" for ch in chars]
    seen = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def load_text_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved in a local folder (`save_pretrained`), never fetched."""
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
