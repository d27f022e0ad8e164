"""The published `config.json` of the hub backbones the zoo names, so a config can be checked (architecture,
parameter count, memory plan) on a machine with no network and no copy of the weights."""

from __future__ import annotations

_V3 = dict(model_type="deberta-v2", vocab_size=128100, max_position_embeddings=512, relative_attention=True,
           position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
           layer_norm_eps=1e-7, max_relative_positions=-1, position_biased_input=False, type_vocab_size=0,
           hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02)

KNOWN_CONFIGS: dict[str, dict] = {
    "microsoft/deberta-v3-xsmall": dict(_V3, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                        intermediate_size=1536),
    "microsoft/deberta-v3-small": dict(_V3, hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                                       intermediate_size=3072),
    "microsoft/deberta-v3-base": dict(_V3, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                      intermediate_size=3072),
    "microsoft/deberta-v3-large": dict(_V3, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                       intermediate_size=4096),
    "microsoft/deberta-v2-xlarge": dict(_V3, hidden_size=1536, num_hidden_layers=24, num_attention_heads=24,
                                        intermediate_size=6144, conv_kernel_size=3, conv_act="gelu"),
}
