"""What one training step of the attention model costs in time and memory as the catalog grows,
with the loss `train.loss_negatives: auto` chooses (config.auto_negatives) against the full softmax.

    python -m benchmarks.step_memory --out RESULT.json [--shapes 3417x200,20000x200,59048x200]
        [--batch 128] [--d-model 128] [--block transformer] [--max-step-logits 200000000]
        [--full-up-to 600000000]

Each case runs in its own process (one CPU thread, as a rank runs), so its peak resident memory is
its own: three steps of the product's model (every feature group off: ids only) on random windows
of the shape ITEMSxLENGTH, the median step time and the peak RSS printed. The full softmax is run
only where its logits stay under --full-up-to: beyond that it would exhaust a 24 GiB machine
(about 16 bytes a logit, measured here), and a process the kernel kills proves nothing new.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks import harness
from recsys_spark.config import auto_negatives

CASE = """
import json, resource, statistics, sys, time, torch
from recsys_spark.model import AttentionRecommender, ModelConfig
torch.set_num_threads(1)
torch.manual_seed(0)
n_items, max_len, batch, d, neg = (int(a) for a in sys.argv[1:6])
m = AttentionRecommender(ModelConfig(n_items=n_items, max_len=max_len, d_model=d, loss_negatives=neg,
                                     block=sys.argv[6], use_profile=False, use_content=False, use_text=False, use_vectors=False))
opt = torch.optim.Adam(m.parameters(), 1e-3)
seq, target = torch.randint(1, n_items, (batch, max_len)), torch.randint(1, n_items, (batch, max_len))
times = []
for _ in range(3):
    t = time.time()
    opt.zero_grad()
    m(seq, target)[1].backward()
    opt.step()
    times.append(time.time() - t)
print(json.dumps({"step_s": statistics.median(times),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def run_case(n_items: int, max_len: int, batch: int, d_model: int, negatives: int, block: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CASE, str(n_items), str(max_len), str(batch), str(d_model),
                          str(negatives), block], capture_output=True, text=True)
    if out.returncode != 0:
        return {"failed": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default="3417x200,12102x50,20000x200,59048x200")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--block", default="transformer", help="the encoder's layers (train.block)")
    p.add_argument("--max-step-logits", type=int, default=200_000_000)
    p.add_argument("--full-up-to", type=int, default=600_000_000)
    args = p.parse_args(argv)
    rows = []
    for shape in args.shapes.split(","):
        n_items, max_len = (int(x) for x in shape.split("x"))
        logits = args.batch * max_len * n_items
        negatives = auto_negatives(args.batch, max_len, n_items, args.max_step_logits)
        row = {"items": n_items, "max_len": max_len, "batch": args.batch, "full_step_logits": logits,
               "auto_negatives": negatives}
        row["full"] = (run_case(n_items, max_len, args.batch, args.d_model, 0, args.block)
                       if logits <= args.full_up_to
                       else {"skipped": f"{logits:.3g} logits, about {logits * 16 / 2 ** 30:.0f} GiB"})
        if negatives:
            row["auto"] = run_case(n_items, max_len, args.batch, args.d_model, negatives, args.block)
        rows.append(row)
        print(json.dumps(row), flush=True)
    harness.write_result(args.out, {"benchmark": "step_memory", "d_model": args.d_model, "block": args.block,
                                    "max_step_logits": args.max_step_logits, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
