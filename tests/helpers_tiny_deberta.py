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


# what the hub's microsoft/deberta-v3-* config.json holds (no dtype field), shrunk to a tiny width and depth
V3_TINY = dict(model_type="deberta-v2", attention_probs_dropout_prob=0.1, hidden_act="gelu", hidden_dropout_prob=0.1,
               hidden_size=32, initializer_range=0.02, intermediate_size=64, max_position_embeddings=512,
               relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
               pos_att_type="p2c|c2p", layer_norm_eps=1e-7, max_relative_positions=-1, position_biased_input=False,
               num_attention_heads=2, num_hidden_layers=3, type_vocab_size=0, vocab_size=1100)


def build_hub_like_deberta_v3(folder: Path, texts: pd.Series | list[str], weights: str = "bin-fp16",
                              spm_vocab: int = 1000) -> Path:
    """A folder shaped like the hub's microsoft/deberta-v3-base: `config.json` without a dtype, the weights in
    fp16 as `pytorch_model.bin` (or `weights="safetensors-bf16"`: bf16 `model.safetensors`), an `spm.model`
    trained with sentencepiece on essays (the hub's special pieces and ids: [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3)
    and the hub's two-key `tokenizer_config.json`, so transformers converts the slow tokenizer at load time.
    More embedding rows than tokens, as on the hub (128100 rows for 128001 tokens)."""
    import io
    import json

    import sentencepiece as spm
    import torch
    from safetensors.torch import save_file
    from transformers import DebertaV2Config, DebertaV2Model

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=spm_vocab,
                                   model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]",
                                   bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
                                   normalization_rule_name="nmt_nfkc", hard_vocab_limit=False, minloglevel=2)
    (folder / "spm.model").write_bytes(buf.getvalue())
    torch.manual_seed(0)
    model = DebertaV2Model(DebertaV2Config(**V3_TINY))
    if weights == "bin-fp16":
        torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    elif weights == "safetensors-bf16":
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()},
                  str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        raise ValueError(weights)
    (folder / "config.json").write_text(json.dumps(V3_TINY, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    return folder
