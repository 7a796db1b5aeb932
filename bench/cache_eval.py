"""Is the semantic cache right? Paraphrase hits against wrong answers, raygate vs plain cosine thresholds.

    python -m bench.cache_eval --dataset ../shared/semcache/dev.jsonl

For a JSONL file of groups (`anchor`, `paraphrases`, `hard_negatives` [{text, kind}], `system`,
`context_dependent`), it stores every group's anchor as a cache entry (with its system prompt, in
its own conversation when the group is context-dependent), then looks up every paraphrase and every
hard negative through raygate's own matching code (cache/keys.py scopes, the embedder,
cache/matching.py), all anchors in one index as in a live cache. It prints:

- paraphrase hit rate: a paraphrase answered with its own group's anchor;
- false-hit rate: a hard negative answered from the cache at all (per negative kind too), plus
  paraphrases answered with *another* group's anchor (also a wrong answer);
- cross-conversation hits: a context-dependent paraphrase asked in another conversation that is
  answered with the anchor of the first;
- the same for the plain cosine-threshold baselines (GPTCache / RedisVL style: the last message's
  fp32 embedding, nearest neighbour over every entry, no scope, no checks) at 0.80 and 0.90;
- a cross-validated figure for raygate: the threshold chosen on 4/5 of the groups, counted on the
  fifth, so that the reported rate is not one the threshold was fitted to.

The result also goes to JSON (`--out`).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from bench.report import write_json
from cache.config import CacheConfig, RequestCacheOptions
from cache.embedder import Embedder
from cache.keys import plan
from cache.matching import guarded_neighbours
from cache.store import IndexRecord
from cache.vector_index import VectorIndex

MODEL = "tiny-llama"
TENANT = "eval"
BASELINES = (0.80, 0.90)
THRESHOLD_GRID = (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def _conversation(group_id: str, variant: str) -> list[dict]:
    """A prior exchange that makes a context-dependent question mean something particular."""
    return [{"role": "user", "content": f"Earlier question of conversation {variant} about {group_id}."},
            {"role": "assistant", "content": f"Earlier answer in conversation {variant}."}]


def _request(text: str, system: Optional[str], history: list[dict]) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + history
    return {"model": MODEL, "messages": messages + [{"role": "user", "content": text}], "temperature": 0}


@dataclass
class Probe:
    group: int
    text: str
    kind: str  # "paraphrase", "cross" (context-dependent paraphrase from another conversation) or a negative kind
    scope: str


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build(groups: list[dict], config: CacheConfig):
    anchors: list[tuple[str, str]] = []  # (scope, text) per group
    probes: list[Probe] = []
    opts = RequestCacheOptions()
    for gi, g in enumerate(groups):
        history = _conversation(g["id"], "A") if g.get("context_dependent") else []
        anchor_plan = plan("chat", _request(g["anchor"], g.get("system"), history), opts, config, TENANT)
        anchors.append((anchor_plan.scope, g["anchor"]))
        for p in g["paraphrases"]:
            probes.append(Probe(gi, p, "paraphrase", plan("chat", _request(p, g.get("system"), history), opts, config, TENANT).scope))
            if g.get("context_dependent"):
                other = _conversation(g["id"], "B")
                probes.append(Probe(gi, p, "cross", plan("chat", _request(p, g.get("system"), other), opts, config, TENANT).scope))
        for n in g["hard_negatives"]:
            probes.append(Probe(gi, n["text"], n["kind"], plan("chat", _request(n["text"], g.get("system"), history), opts, config, TENANT).scope))
    return anchors, probes


def answers_raygate(index: VectorIndex, probe: Probe, vector: np.ndarray, threshold: float) -> Optional[int]:
    for n in guarded_neighbours(index, probe.scope, probe.text, vector, threshold):
        return int(n.key)
    return None


def answers_baseline(matrix: np.ndarray, vector: np.ndarray, threshold: float) -> Optional[int]:
    sims = matrix @ vector
    best = int(np.argmax(sims))
    return best if sims[best] >= threshold else None


def score(probes: list[Probe], answers: list[Optional[int]], groups: Optional[set[int]] = None) -> dict:
    para = para_hit = para_wrong = neg = neg_hit = cross = cross_hit = 0
    by_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for p, a in zip(probes, answers):
        if groups is not None and p.group not in groups:
            continue
        if p.kind == "paraphrase":
            para += 1
            para_hit += a == p.group
            para_wrong += a is not None and a != p.group
        elif p.kind == "cross":
            cross += 1
            cross_hit += a == p.group
        else:
            neg += 1
            neg_hit += a is not None
            by_kind[p.kind][0] += a is not None
            by_kind[p.kind][1] += 1
    wrong = neg_hit + para_wrong
    return {
        "paraphrases": para, "paraphrase_hits": para_hit, "paraphrase_hit_rate": para_hit / max(para, 1),
        "paraphrases_answered_by_another_group": para_wrong,
        "hard_negatives": neg, "false_hits": neg_hit, "false_hit_rate": neg_hit / max(neg, 1),
        "wrong_answers": wrong, "wrong_answer_rate": wrong / max(neg + para, 1),
        "false_hits_by_kind": {k: {"hits": v[0], "of": v[1]} for k, v in sorted(by_kind.items())},
        "cross_conversation_probes": cross, "cross_conversation_hits": cross_hit,
    }


def cross_validate(groups: list[dict], probes, answers_at: dict[float, list], folds: int = 5,
                   max_false: float = 0.01) -> dict:
    """Pick the threshold on the other folds (most paraphrase hits with false hits <= max_false)."""
    ids = np.random.default_rng(0).permutation(len(groups))
    parts = [set(int(i) for i in ids[k::folds]) for k in range(folds)]
    totals = collections.Counter()
    chosen = []
    for k in range(folds):
        train = set().union(*(parts[j] for j in range(folds) if j != k))
        ok = [(score(probes, answers_at[t], train)["paraphrase_hit_rate"], t) for t in THRESHOLD_GRID
              if score(probes, answers_at[t], train)["false_hit_rate"] <= max_false]
        t = max(ok)[1] if ok else max(THRESHOLD_GRID)
        chosen.append(t)
        s = score(probes, answers_at[t], parts[k])
        for key in ("paraphrases", "paraphrase_hits", "hard_negatives", "false_hits", "wrong_answers"):
            totals[key] += s[key]
    return {
        "folds": folds, "thresholds_chosen": chosen,
        "paraphrase_hit_rate": totals["paraphrase_hits"] / max(totals["paraphrases"], 1),
        "false_hit_rate": totals["false_hits"] / max(totals["hard_negatives"], 1),
        "wrong_answer_rate": totals["wrong_answers"] / max(totals["paraphrases"] + totals["hard_negatives"], 1),
    }


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=None, help="default: serve_config's cache threshold")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cache_eval.json"))
    args = parser.parse_args(argv)

    config = CacheConfig()
    threshold = args.threshold if args.threshold is not None else config.similarity_threshold
    groups = load(args.dataset)
    anchors, probes = build(groups, config)
    t0 = time.perf_counter()
    embedder = Embedder(config.embedder.model_path, int8=config.embedder.int8)
    anchor_vecs = embedder.encode([text for _, text in anchors])
    probe_vecs = embedder.encode([p.text for p in probes])
    embed_s = time.perf_counter() - t0

    index = VectorIndex(embedder.dim)
    for gi, ((scope, text), vec) in enumerate(zip(anchors, anchor_vecs)):
        index.add(IndexRecord(str(gi), scope, text, vec, float("inf")))
    answers_at = {t: [answers_raygate(index, p, v, t) for p, v in zip(probes, probe_vecs)]
                  for t in sorted(set(THRESHOLD_GRID) | {threshold})}
    results = {"dataset": str(args.dataset), "groups": len(groups), "embedding_seconds": round(embed_s, 2),
               "raygate": {"threshold": threshold, **score(probes, answers_at[threshold])},
               "raygate_cross_validated": cross_validate(groups, probes, answers_at),
               "raygate_by_threshold": {str(t): {k: v for k, v in score(probes, answers_at[t]).items()
                                                 if k in ("paraphrase_hit_rate", "false_hit_rate", "wrong_answers")}
                                        for t in THRESHOLD_GRID}}
    # The baselines are what GPTCache/RedisVL users run: the fp32 model, nearest neighbour, a threshold.
    if config.embedder.int8:
        plain = Embedder(config.embedder.model_path, int8=False)
        anchor_vecs, probe_vecs = plain.encode([text for _, text in anchors]), plain.encode([p.text for p in probes])
    for t in BASELINES:
        results[f"cosine_{t:.2f}"] = {"threshold": t, **score(probes, [answers_baseline(anchor_vecs, v, t) for v in probe_vecs])}

    print(f"{args.dataset}: {len(groups)} groups, {sum(p.kind == 'paraphrase' for p in probes)} paraphrases, "
          f"{sum(p.kind not in ('paraphrase', 'cross') for p in probes)} hard negatives")
    print(f"{'matcher':<26}{'paraphrase hits':>16}{'false hits':>12}{'wrong answers':>15}{'cross-conv.':>13}")
    rows = [("raygate @%.2f" % threshold, results["raygate"])] + [(f"cosine @{t:.2f}", results[f"cosine_{t:.2f}"]) for t in BASELINES]
    for name, r in rows:
        print(f"{name:<26}{r['paraphrase_hit_rate']:>15.1%}{r['false_hit_rate']:>12.2%}"
              f"{r['wrong_answers']:>15}{r['cross_conversation_hits']:>13}")
    cv = results["raygate_cross_validated"]
    print(f"{'raygate, 5-fold CV':<26}{cv['paraphrase_hit_rate']:>15.1%}{cv['false_hit_rate']:>12.2%}"
          f"   thresholds {cv['thresholds_chosen']}")
    print("false hits by kind (raygate | cosine 0.80):")
    for kind, v in results["raygate"]["false_hits_by_kind"].items():
        b = results["cosine_0.80"]["false_hits_by_kind"][kind]
        print(f"  {kind:<24}{v['hits']:>4}/{v['of']:<5}| {b['hits']:>4}/{b['of']}")
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
