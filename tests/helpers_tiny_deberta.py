"""A tiny but real DeBERTa-v2 backbone for tests: random weights from a DebertaV2Config and a WordPiece
tokenizer trained with `tokenizers` on real essays, saved with save_pretrained and loaded back by path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, relative_attention=True, pos_att_type=["p2c", "c2p"],
            position_biased_input=False, position_buckets=32, type_vocab_size=0)


def build_tiny_deberta(folder: Path, texts: pd.Series | list[str], vocab_size: int = 800) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import DebertaV2Config, DebertaV2Model, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls),
                                                                                                ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    config = DebertaV2Config(vocab_size=tok.get_vocab_size(), pad_token_id=fast.pad_token_id, **TINY)
    folder.mkdir(parents=True, exist_ok=True)
    DebertaV2Model(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def tiny_config(backbone: Path | str, **overrides: object):
    """A TransformerConfig for the tiny backbone: short essays, CPU, fp32."""
    from fb3stack.base.transformer.config import TransformerConfig

    base = dict(name="tiny", kind="transformer", backbone=str(backbone), max_len=64, batch_size=8,
                eval_batch_size=16, epochs=2, lr=2e-3, head_lr=5e-3, llrd=0.9, pooler="attention",
                loss="smoothl1", device="cpu", amp="none", warmup_ratio=0.0, log_every=1)
    return TransformerConfig(**{**base, **overrides})
