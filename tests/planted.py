"""A 2-layer model with a planted circuit, its weights set by hand, for ground-truth tests of discovery.

Task: prompts `[key, filler, filler, Q]`, key in {A, B}; the answer is the key (incorrect: the other
key). The circuit (residual directions named in `DIRS`):
  L0H0 "mover"   k reads the `key` feature of the embedding, q is a constant (bias), so every position
                 attends to the key token; v reads the key's identity (tA/tB) and writes mA/mB;
  MLP0 "query"   a ReLU neuron reads the Q token's feature qf and writes `isq`;
  L1H0 "answer"  q reads `isq` (so only the Q position attends to tokens rather than the sink), k is
                 a constant, v reads mA/mB and writes oA/oB;
  unembedding    logit(A) reads oA, logit(B) reads oB.
Ground-truth edges (under mean ablation): embed->L0H0.k, embed->L0H0.v, embed->MLP0, L0H0->L1H0.v,
MLP0->L1H0.q, L1H0->logits. Distractors L0H1, L1H1 and MLP1 (and 3 junk neurons of MLP0) have
random weights that write only into a junk subspace nobody reads. A large constant bias (C2) keeps the
RMS norms of layer-1 readers nearly constant, so other edges act only through tiny norm changes.
"""

from __future__ import annotations

import math
import random

import torch

from sparsecircuits.model import ModelConfig, Transformer
from sparsecircuits.tasks.base import Example, TaskData

A, B, Q = 0, 1, 6
FILLERS = (2, 3, 4, 5)
DIRS = dict(c=0, C2=1, tA=2, tB=3, key=4, qf=5, f0=6, mA=10, mB=11, isq=12, oA=13, oB=14, pad=20)
JUNK = list(range(15, 20))
GROUND_TRUTH = (("hook_embed[0]", "blocks.0.hook_k_input[0]"), ("hook_embed[0]", "blocks.0.hook_v_input[0]"),
                ("hook_embed[0]", "blocks.0.hook_mlp_out[0]"), ("blocks.0.attn.hook_z[0]", "blocks.1.hook_v_input[0]"),
                ("blocks.0.hook_mlp_out[0]", "blocks.1.hook_q_input[0]"), ("blocks.1.attn.hook_z[0]", "logits[0]"))


def planted_model() -> Transformer:
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_head=8, d_mlp=8, d_vocab=8, n_ctx=8, norm="rms",
                      positions="none", act="relu", attn_sink=True, bigram_table=False, act_sparsity=1.0)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    D = DIRS
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        E = model.W_E
        E[:, D["c"]] = 2.0
        E[A, D["tA"]], E[B, D["tB"]], E[A, D["key"]], E[B, D["key"]] = 1.0, 1.0, 1.0, 1.0
        E[Q, D["qf"]], E[Q, D["pad"]] = 1.0, 1.0
        for i, f in enumerate(FILLERS):
            E[f, D["f0"] + i], E[f, D["pad"]] = 1.0, 1.0
        E[7, D["pad"]] = 1.4
        big = math.sqrt((4 + 400 + 2) / 32)  # RMS of the residual after layer 0's attention bias
        b0, b1 = model.blocks
        b0.ln1.w.fill_(math.sqrt(6 / 32))
        for ln in (b0.ln2, b1.ln1, b1.ln2, model.ln_final):
            ln.w.fill_(big)
        a0, a1 = b0.attn, b1.attn
        a0.b_Q[0] = 2.5
        a0.W_K[0, D["key"]] = 2.5
        a0.W_V[0, D["tA"]], a0.W_V[1, D["tB"]] = 1.0, 1.0
        a0.W_O[D["mA"], 0], a0.W_O[D["mB"], 1] = 1.0, 1.0
        a0.b_O[D["C2"]] = 20.0
        a0.sink[0] = -10.0
        a1.W_Q[0, D["isq"]] = 3.0
        a1.b_K[0] = 3.0
        a1.W_V[0, D["mA"]], a1.W_V[1, D["mB"]] = 1.0, 1.0
        a1.W_O[D["oA"], 0], a1.W_O[D["oB"], 1] = 1.0, 1.0
        a1.sink[0] = 3.0
        b0.mlp.W_in[0, D["qf"]] = 1.0
        b0.mlp.W_out[D["isq"], 0] = 1.0
        # distractors: random reads, writes only into the junk subspace
        feats = list(range(2, 15))
        for attn in (a0, a1):
            for W in (attn.W_Q, attn.W_K, attn.W_V):
                W[8:, feats] = 0.5 * torch.randn(8, len(feats), generator=g)
            attn.W_O[JUNK, 8:] = 0.5 * torch.randn(len(JUNK), 8, generator=g)
        b0.mlp.W_in[1:4, feats] = 0.5 * torch.randn(3, len(feats), generator=g)
        b0.mlp.W_out[JUNK, 1:4] = 0.5 * torch.randn(len(JUNK), 3, generator=g)
        b1.mlp.W_in[:, 2:20] = 0.5 * torch.randn(8, 18, generator=g)
        b1.mlp.W_out[JUNK, :] = 0.5 * torch.randn(len(JUNK), 8, generator=g)
        assert model.W_U is not None
        model.W_U[A, D["oA"]], model.W_U[B, D["oB"]] = 6.0, 6.0
    return model


def planted_data(n: int = 16, seed: int = 0) -> TaskData:
    rng = random.Random(seed)
    toks, cfs, correct, incorrect = [], [], [], []
    for _ in range(n):
        key = rng.choice((A, B))
        toks.append([key, rng.choice(FILLERS), rng.choice(FILLERS), Q])
        cfs.append([A + B - key, rng.choice(FILLERS), rng.choice(FILLERS), Q])
        correct.append(key)
        incorrect.append(A + B - key)
    examples = [Example(str(t), str(c), str(i)) for t, c, i in zip(toks, correct, incorrect)]
    return TaskData("planted", examples, torch.tensor(toks), torch.full((n,), 4), torch.tensor(correct),
                    torch.tensor(incorrect), torch.tensor(cfs), ("A", "B"), 0)
