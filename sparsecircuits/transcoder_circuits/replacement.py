"""The linearised replacement model of an attribution graph (Dunefsky et al. 2024; circuit-tracer).

One clean forward pass of the `Transformer` records what the linearisation freezes; the replacement
model is then the same hooked `Transformer` run with:

1. every norm scale (`ln1`, `ln2`, `ln_final`, post-norms `ln1_post`/`ln2_post`: `hook_scale`), every
   attention pattern (`attn.hook_pattern`, soft-capped or not) and every AbsTopK selection (the
   `*_keep` hooks, Gao et al.'s activation sparsity: with its kept set S fixed, AbsTopK is the linear
   map x -> S ⊙ x) replaced by its recorded value, so the map from what is written into the residual
   stream to what a transcoder or the unembedding reads is affine;
2. each MLP output (`hook_mlp_out`) replaced by its transcoder's output computed from *given* feature
   activations (not recomputed: stopping at feature activations makes every edge a direct effect)
   plus the transcoder's skip path on the current input, plus a given error term.

The frozen selections, site by site (`ModelConfig.act_sparsity_sites`): `attn_in` (`ln1.hook_keep`,
inside ln1, so `ln1.hook_normalized` is already selected), `v` and `attn_out` sit on the linear
paths from the residual stream through attention and must be frozen; `q` and `k` act only through
the pattern, which is frozen anyway; `mlp_in` (`ln2.hook_keep`) lies between the residual stream and
a transcoder reading `ln2.hook_normalized` and must be frozen (for one reading `hook_mlp_in` or
`hook_resid_mid` it is inside the replaced MLP); `mlp_neurons` is inside the MLP, which the
transcoder replaces; `mlp_out`'s selection comes before `hook_mlp_out`, so the transcoder's target
(`hook_mlp_out`, what it is trained on) is the selected output and the replacement overwrites it
after the selection: error = selected MLP out − transcoder out, exact. Every selection is recorded
and replayed, needed or not. With post-norms the attention output is normed (frozen scale) before its selection;
the MLP's post-norm is inside what the transcoder predicts.

With the clean activations and errors (error = MLP out − transcoder out) it reproduces the model's
logits exactly. `replacement_forward` runs it with edited activations, errors or embeddings; it is
how bias contributions are computed (all sources zero) and how tests measure interventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.model.transformer import Transformer

# circuit-tracer's own MLP hook names, mapped onto ours.
_HOOK_ALIASES = {"mlp.hook_in": "ln2.hook_normalized", "mlp.hook_out": "hook_mlp_out"}
# Transcoder inputs we can linearise: the normed MLP input, or the residual the MLP reads.
INPUT_SITES = ("ln2.hook_normalized", "hook_mlp_in", "hook_resid_mid")


def _site(hook: str, layer: int) -> str:
    prefix = f"blocks.{layer}."
    if not hook.startswith(prefix):
        raise ValueError(f"the transcoder for layer {layer} reads/writes {hook!r}, not a hook of block {layer}")
    rest = hook[len(prefix):]
    return _HOOK_ALIASES.get(rest, rest)


def check_transcoders(model: Transformer, transcoders: dict[int, Dictionary]) -> list[str]:
    """Validate a per-layer transcoder set against `model`; returns each layer's input site.

    Every layer needs one transcoder from an `INPUT_SITES` hook to `hook_mlp_out`, with widths equal
    to d_model. Activation sparsity is fine: `freeze` fixes every AbsTopK selection."""
    cfg = model.cfg
    if sorted(transcoders) != list(range(cfg.n_layers)):
        raise ValueError(f"the transcoder set covers layers {sorted(transcoders)}, but the model has layers "
                         f"0..{cfg.n_layers - 1}: attribution graphs need one transcoder per layer")
    sites = []
    for layer, tc in sorted(transcoders.items()):
        c = tc.cfg
        site, out = _site(c.hook, layer), _site(c.out_hook, layer)
        if out != "hook_mlp_out":
            raise ValueError(f"the transcoder for layer {layer} predicts {c.out_hook!r}; expected blocks.{layer}.hook_mlp_out")
        if site not in INPUT_SITES:
            raise ValueError(f"the transcoder for layer {layer} reads {c.hook!r}; supported inputs: {INPUT_SITES}")
        if site == "hook_resid_mid" and cfg.parallel_attn_mlp:
            raise ValueError("a parallel-attention model has no hook_resid_mid; use hook_mlp_in")
        if c.d_in != cfg.d_model or c.d_out != cfg.d_model:
            raise ValueError(f"the transcoder for layer {layer} maps {c.d_in} -> {c.d_out}, but the model's "
                             f"d_model is {cfg.d_model}")
        sites.append(site)
    return sites


@dataclass
class FrozenState:
    """Everything one clean forward records for the replacement model (batch of one prompt)."""

    tokens: Tensor  # [pos] the prompt
    scales: dict[str, Tensor]  # hook_scale name -> [pos, 1] (or [pos, 1] per post-norm)
    patterns: list[Tensor]  # per layer [head, query_pos, key_pos]
    inputs: list[Tensor]  # per layer [pos, d_model] transcoder input
    acts: list[Tensor]  # per layer [pos, width] feature activations
    errors: list[Tensor]  # per layer [pos, d_model] MLP out − transcoder out
    embed: Tensor  # [pos, d_model] hook_embed (the token embedding nodes' values)
    final_normed: Tensor  # [pos, d_model] ln_final.hook_normalized
    logits: Tensor  # [pos, d_vocab] the model's own logits
    sites: list[str]  # per layer transcoder input site (see INPUT_SITES)
    attn_in: list[Tensor]  # per layer [pos, d_model] ln1.hook_normalized (what attention reads)
    keeps: dict[str, Tensor]  # `*_keep` hook name -> [pos, width] 0/1 AbsTopK selection (only where it is on)

    def keep(self, name: str) -> Tensor | None:
        """The frozen selection at hook `name` ([pos, width]), or None where AbsTopK is off."""
        return self.keeps.get(name)


@torch.no_grad()
def freeze(model: Transformer, transcoders: dict[int, Dictionary], tokens: Int[Tensor, " pos"]) -> FrozenState:
    """Step 1 of the module docstring: the clean forward pass and what it freezes."""
    if tokens.dim() != 1 or tokens.numel() == 0:
        raise ValueError(f"the prompt must be a non-empty 1-d token tensor, got shape {tuple(tokens.shape)}")
    sites = check_transcoders(model, transcoders)
    L = model.cfg.n_layers
    in_names = [f"blocks.{i}.{s}" for i, s in enumerate(sites)]
    names = [n for n in model.hook_points if n.endswith(("hook_scale", "attn.hook_pattern", "_keep"))]
    names += in_names + [f"blocks.{i}.hook_mlp_out" for i in range(L)] + [f"blocks.{i}.ln1.hook_normalized" for i in range(L)]
    names += ["hook_embed", "ln_final.hook_normalized"]
    logits, cache = model.run_with_cache(tokens[None], names_filter=list(dict.fromkeys(names)))
    acts, errors, inputs = [], [], []
    for i in range(L):
        x = cache[in_names[i]][0]
        z = transcoders[i].encode(x)
        errors.append(cache[f"blocks.{i}.hook_mlp_out"][0] - transcoders[i].decode(z, x))
        acts.append(z)
        inputs.append(x)
    # Norm scales are [batch, pos, 1]; with split q/k/v inputs they would be 4-d (not used here).
    scales = {n: cache[n][0] for n in cache if n.endswith("hook_scale")}
    keeps = {n: cache[n][0] for n in cache if n.endswith("_keep")}
    return FrozenState(tokens=tokens, scales=scales, patterns=[cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(L)],
                       inputs=inputs, acts=acts, errors=errors, embed=cache["hook_embed"][0],
                       final_normed=cache["ln_final.hook_normalized"][0], logits=logits[0], sites=sites,
                       attn_in=[cache[f"blocks.{i}.ln1.hook_normalized"][0] for i in range(L)], keeps=keeps)


@dataclass
class ReplacementOutput:
    """Reads of a `replacement_forward` run, batched like its inputs."""

    pre_acts: list[Tensor]  # per layer [batch, pos, width] transcoder pre-activations
    final_normed: Tensor  # [batch, pos, d_model] what the unembedding reads
    logits: Tensor  # [batch, pos, d_vocab]


def replacement_forward(
    model: Transformer,
    transcoders: dict[int, Dictionary],
    state: FrozenState,
    acts: list[Float[Tensor, "batch pos width"]] | None = None,
    errors: list[Float[Tensor, "batch pos d_model"]] | None = None,
    embed: Float[Tensor, "batch pos d_model"] | None = None,
) -> ReplacementOutput:
    """Run the frozen replacement model (step 2 of the module docstring) on a batch of edits.

    `acts`, `errors` and `embed` default to the clean values; pass batched tensors to intervene
    (one intervention per batch row). Feature activations are never recomputed."""
    B = next((t.shape[0] for t in (embed, *(acts or []), *(errors or [])) if t is not None), 1)
    L = model.cfg.n_layers
    acts = acts or [a[None].expand(B, -1, -1) for a in state.acts]
    errors = errors or [e[None].expand(B, -1, -1) for e in state.errors]
    reads: dict[str, Tensor] = {}

    def frozen(value: Tensor):  # noqa: ANN202
        return lambda x, hook: value.expand_as(x)

    def read(x: Tensor, hook) -> None:  # noqa: ANN001
        reads[hook.name] = x

    def mlp_out(layer: int):  # noqa: ANN202
        in_name = f"blocks.{layer}.{state.sites[layer]}"
        return lambda x, hook: transcoders[layer].decode(acts[layer], reads[in_name]) + errors[layer]

    hooks: list = [(n, frozen(v)) for n, v in (*state.scales.items(), *state.keeps.items())]
    hooks += [(f"blocks.{i}.attn.hook_pattern", frozen(state.patterns[i])) for i in range(L)]
    hooks += [(f"blocks.{i}.{state.sites[i]}", read) for i in range(L)]
    hooks += [(f"blocks.{i}.hook_mlp_out", mlp_out(i)) for i in range(L)]
    hooks.append(("ln_final.hook_normalized", read))
    if embed is not None:
        hooks.append(("hook_embed", lambda x, hook: embed))
    with model.hooks(hooks):
        logits = model(state.tokens[None].expand(B, -1))
    pre = [transcoders[i].pre_acts(reads[f"blocks.{i}.{state.sites[i]}"]) for i in range(L)]
    return ReplacementOutput(pre_acts=pre, final_normed=reads["ln_final.hook_normalized"], logits=logits)
