"""Lan, Torr & Barez (2024), "Towards interpretable sequence continuation", on GPT-2 small.

Needs the GPT-2 small weights locally (a Hugging Face folder with config.json, model.safetensors and
tokenizer.json, or `gpt2` in the Hugging Face cache); it cannot run without them (the development
machine has no copy). Steps, each the library call the CLI also makes:
  1. load GPT-2 small onto our Transformer (`model/load.py`);
  2. per task (numerals, number words, months): 256 prompts, kept if p(correct) > 2 p(incorrect);
  3. iterative node pruning + edge pruning with position-specific mean ablation (Lan et al.);
  4. node and edge IoU of the three circuits, the cross-task faithfulness matrix, the shared core;
  5. head roles on numerals: attention by position type, OV successor scores, logit lens.
Paper targets (≈): numerals 14 heads + 11 MLPs; heads shared by all three 0.1, 4.4, 6.1, 6.6, 6.10,
7.11, 8.8, 9.1; head 9.1 OV successor ≈ 87-91%; the logit lens flips to the next member at layers 8-9.
The same from the command line:
    sparsecircuits discover --model gpt2 --task seqcont_numerals --method iterative --ablation position-mean --out num.json
    sparsecircuits compare-circuits num.json words.json months.json --model gpt2
    sparsecircuits heads --model gpt2 --task seqcont_numerals

    python examples/seqcont_gpt2.py [MODEL] [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparsecircuits.component_circuits.evaluation import circuit_faithfulness, cross_task_matrix
from sparsecircuits.component_circuits.head_roles import head_roles
from sparsecircuits.component_circuits.methods import DiscoverConfig, discover
from sparsecircuits.component_circuits.prepare import prepare
from sparsecircuits.evaluate import filter_solved
from sparsecircuits.graph import edge_iou, intersect, node_iou
from sparsecircuits.model.load import load_pretrained
from sparsecircuits.tasks.base import load_task
from sparsecircuits.tasks.sequences import MEMBERS

TASKS = ("seqcont_numerals", "seqcont_number_words", "seqcont_months")


def main(model_name: str = "gpt2", out: Path = Path("seqcont-gpt2")) -> None:
    pre = load_pretrained(model_name, download=False)
    model, tok = pre.model.eval(), pre.tokenizer
    assert tok is not None, "the checkpoint folder needs tokenizer.json"
    out.mkdir(parents=True, exist_ok=True)
    cfg = DiscoverConfig(ablation="position-mean", keep_fraction=0.8)
    data, circuits, tasks = {}, {}, {}
    for name in TASKS:
        data[name] = filter_solved(model, load_task(name, tok, model.cfg.n_ctx, 256))
        circuits[name] = discover(model, data[name], "iterative", cfg)
        circuits[name].save(out / f"{name}.json")
        tasks[name] = prepare(model, data[name], cfg.ablation)
        heads = sorted(f"{n.layer}.{n.index}" for n in circuits[name].nodes if n.kind == "head")
        print(f"{name}: {len(data[name])} prompts; {len(heads)} heads, "
              f"{sum(n.kind == 'mlp' for n in circuits[name].nodes)} MLPs; heads {' '.join(heads)}")
    for a in TASKS:
        print(a, " ".join(f"node IoU {b}: {node_iou(circuits[a], circuits[b]):.2f} / edge {edge_iou(circuits[a], circuits[b]):.2f}"
                          for b in TASKS if b != a))
    matrix = cross_task_matrix(tasks, circuits)
    for a in TASKS:
        print(f"circuit {a} on: " + ", ".join(f"{b} {matrix[a][b]:.2f}" for b in TASKS))
    core = intersect(list(circuits.values()))
    core.save(out / "shared_core.json")
    print("shared heads:", " ".join(sorted(f"{n.layer}.{n.index}" for n in core.nodes if n.kind == "head")),
          "; faithfulness:", ", ".join(f"{t} {circuit_faithfulness(tasks[t], core):.2f}" for t in TASKS))
    members = [tok.encode(" " + m).ids[0] for m in MEMBERS["seqcont_numerals"]]
    roles = head_roles(model, data["seqcont_numerals"], members)
    assert roles.successor is not None
    top = roles.successor.flatten().topk(5)
    H = model.cfg.n_heads
    print("OV successor heads:", ", ".join(f"{i // H}.{i % H} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
    print("logit lens (logit diff per layer):", " ".join(f"{d:.1f}" for d in roles.lens_diff))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpt2", Path(sys.argv[2]) if len(sys.argv) > 2 else Path("seqcont-gpt2"))
