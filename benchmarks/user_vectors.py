"""User-vector speed: what validation and scoring pay per user, the last layer at the newest
position only (AttentionRecommender.user_vectors) against the whole encoder's states.

    python -m benchmarks.user_vectors --out RESULT.json [--shapes 6040x3417x200,22363x12102x50]
        [--d-model 128] [--layers 2] [--batch 512] [--threads 1] [--repeats 5]

Per shape (users x items x window) it builds a model with random weights (speed does not depend on
them) and full-length histories, then times both paths over every user in batches, alternating
them `repeats` times; it reports the median seconds of each and their ratio, and checks that both
give the same vectors. Pure torch: no Spark.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.harness import write_result
from recsys_spark.model import AttentionRecommender, ModelConfig


def _model(n_items: int, window: int, d_model: int, layers: int) -> AttentionRecommender:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=n_items, max_len=window, d_model=d_model, n_heads=2, n_layers=layers, dropout=0.0,
                      attr_cardinalities=[], n_profile_num=0, use_behaviour=False)
    return AttentionRecommender(cfg).eval()


def _seconds(vectors, seqs: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    with torch.no_grad():
        out = torch.cat([vectors(seqs[lo:lo + batch]) for lo in range(0, len(seqs), batch)])
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default="6040x3417x200,22363x12102x50",
                   help="users x items x window; the defaults are ml-1m's and Beauty's under conf/bench.yaml")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes.split(","):
        users, items, window = (int(x) for x in shape.split("x"))
        model = _model(items, window, args.d_model, args.layers)
        seqs = torch.randint(1, items, (users, window))
        paths = {"whole_encoder": lambda s: model.encode(s)[:, -1], "newest_position_only": model.user_vectors}
        times = {name: [] for name in paths}
        for _ in range(args.repeats):
            outs = {}
            for name, vectors in paths.items():
                seconds, outs[name] = _seconds(vectors, seqs, args.batch)
                times[name].append(seconds)
        same = bool(torch.allclose(outs["whole_encoder"], outs["newest_position_only"], atol=1e-4))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        rows.append({"users": users, "items": items, "window": window, "seconds": times, "median_s": med,
                     "speedup": med["whole_encoder"] / med["newest_position_only"], "same_vectors": same})
        print(f"{shape}: whole encoder {med['whole_encoder']:.2f}s, newest position only "
              f"{med['newest_position_only']:.2f}s ({rows[-1]['speedup']:.2f}x), same vectors: {same}", flush=True)
    write_result(args.out, {"benchmark": "user_vectors", "d_model": args.d_model, "layers": args.layers,
                            "batch": args.batch, "threads": args.threads, "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
