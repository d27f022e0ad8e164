"""flashdeberta's Triton kernels against Hugging Face's eager attention, on a CPU, in Triton's interpreter.

TRITON_INTERPRET=1 runs the kernels' Python source with NumPy instead of compiling them for a GPU: slow, fp32
only, but it checks what the kernels compute (forward and backward, with padding, the short-sequence path
and the unpadded path flashdeberta takes at 1024 tokens) and fb3stack's attention_impl swap, with no GPU.
Speed and bf16 behaviour need the GPU check (benchmarks/gpu_check.py part 3).

    pip install --target /tmp/tsite triton einops flashdeberta==0.0.8     # triton is ~1 GB
    PYTHONPATH=.:/tmp/tsite python benchmarks/attention_interpret_check.py [--long]
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from fb3stack.base.transformer import attention  # noqa: E402


def tiny_deberta(layers: int = 2):  # noqa: ANN201 - DebertaV2Model
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=1000, hidden_size=64, num_hidden_layers=layers, num_attention_heads=2,
                             intermediate_size=128, max_position_embeddings=512, relative_attention=True,
                             pos_att_type=["p2c", "c2p"], position_biased_input=False, position_buckets=256,
                             norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return DebertaV2Model(config).train()


def compare(length: int, pad_from: int | None, layers: int) -> dict:
    eager = tiny_deberta(layers)
    flash = copy.deepcopy(eager)
    attention.enable(flash, "flashdeberta")  # the swap attention_impl makes, without its CUDA check
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (2, length), generator=gen)
    mask = torch.ones_like(ids)
    if pad_from is not None:
        mask[1, pad_from:] = 0
    # a random projection of the output: LayerNorm makes mean(out**2) constant, so its gradient is only noise
    proj = torch.randn(2, length, 64, generator=gen)
    outs, grads = [], []
    t0 = time.perf_counter()
    for model in (eager, flash):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        (out * mask[..., None] * proj).sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    real = mask.bool()
    fwd = (outs[0] - outs[1])[real].abs().max().item()
    num = sum(float((grads[0][k] - grads[1][k]).pow(2).sum()) for k in grads[0])
    den = sum(float(grads[0][k].pow(2).sum()) for k in grads[0])
    return {"length": length, "padding": pad_from is not None, "layers": layers, "max_abs_out_diff": fwd,
            "grad_rel_l2_diff": (num / den) ** 0.5, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", action="store_true", help="also 1024 tokens with padding (the unpadded path; minutes)")
    args = p.parse_args()
    # flashdeberta enters torch.cuda.device(q.device.index) around its launches; a CPU tensor has no index
    torch.cuda.device = lambda index: contextlib.nullcontext()
    cases = [(40, 25, 2), (64, None, 2), (64, 50, 2)] + ([(1024, 700, 1)] if args.long else [])
    for length, pad_from, layers in cases:
        print(compare(length, pad_from, layers), flush=True)


if __name__ == "__main__":
    main()
