"""Tokenisation with the ``tokenizers`` package (BERT WordPiece, truncation, pad to longest)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

PAD_TOKEN = "[PAD]"


def configure_tokenizer(tok: Tokenizer, max_length: int = 256) -> Tokenizer:
    """Truncate to ``max_length`` tokens (special tokens included) and pad to the batch's longest."""
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id(PAD_TOKEN)
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=PAD_TOKEN)  # no fixed length
    return tok


def load_tokenizer(path_or_json: str, max_length: int = 256, *, from_string: bool = False) -> Tokenizer:
    tok = Tokenizer.from_str(path_or_json) if from_string else Tokenizer.from_file(path_or_json)
    return configure_tokenizer(tok, max_length)


_PARSED: "OrderedDict[tuple[str, int], Tokenizer]" = OrderedDict()
_PARSED_LOCK = threading.Lock()
PARSED_TOKENIZERS = 16
"""Parsed tokenizers kept in memory (a few MB each): sub-models fine-tuned from one base share theirs."""


def shared_tokenizer(tokenizer_json: str, max_length: int = 256) -> Tokenizer:
    """:func:`load_tokenizer` of a ``tokenizer.json`` text, parsed once per content and ``max_length`` (LRU of
    :data:`PARSED_TOKENIZERS`): an evicted sub-model coming back, or sub-models sharing a tokenizer, skip the
    parse (≈50 ms for a BERT vocabulary). A configured tokenizer is only read afterwards (``encode_batch``),
    so one object can serve several models and threads."""
    key = (hashlib.sha256(tokenizer_json.encode()).hexdigest(), int(max_length))
    with _PARSED_LOCK:
        tok = _PARSED.get(key)
        if tok is not None:
            _PARSED.move_to_end(key)
            return tok
    tok = load_tokenizer(tokenizer_json, max_length, from_string=True)
    with _PARSED_LOCK:
        _PARSED[key] = tok
        while len(_PARSED) > PARSED_TOKENIZERS:
            _PARSED.popitem(last=False)
    return tok


def encode(tok: Tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Tokenise a batch into int64 ``input_ids``, ``attention_mask`` and ``token_type_ids``."""
    encs = tok.encode_batch(list(texts))
    return {
        "input_ids": np.asarray([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encs], dtype=np.int64),
        "token_type_ids": np.asarray([e.type_ids for e in encs], dtype=np.int64),
    }


_TINY_WORDS = (
    "the a an is are was of to and in on for with model models server serve serving scale "
    "autoscale autoscaling request requests load loads cache hit miss memory budget fast slow "
    "cat dog man woman eat eating food bread movie music play playing drums quick brown fox "
    "jump jumps over lazy new old good bad cost money save saves time"
).split()


def tiny_tokenizer(words: Sequence[str] | None = None, max_length: int = 32) -> Tokenizer:
    """A small BERT-style WordPiece tokenizer built in code (for test models)."""
    from tokenizers import models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_list = specials + list(dict.fromkeys(words or _TINY_WORDS))
    # single characters as '##' continuation pieces so unknown words still split into pieces
    vocab_list += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?" if c not in vocab_list]
    vocab_list += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return configure_tokenizer(tok, max_length)
