"""Seconds of one rank's full-softmax loss step (the logits, the loss, the backward pass), plain and
with label smoothing, at a step's shape (defaults: ml-1m's, about 64 windows x 110 held positions x
3,417 items on one thread).

    python -m benchmarks.loss_cost [--rows 7040] [--items 3417] [--dim 128] [--repeats 5]

"smoothed" is model.full_softmax_loss with train.label_smoothing 0.1; "through log-probabilities"
is the textbook formula (1 - eps) * -log p_target + eps * mean(-log p) computed from the
log-softmax, for comparison. Prints the medians and the two losses (equal to float precision).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from recsys_spark.model import full_softmax_loss


def _through_log_probabilities(h, target, items, smoothing):
    logits = h @ items.T
    logits[:, 0] = float("-inf")
    logp = F.log_softmax(logits, dim=1)
    finite = torch.isfinite(logits)
    spread = -torch.where(finite, logp, 0.0).sum(1) / finite.sum(1)
    return ((1 - smoothing) * -logp.gather(1, target.unsqueeze(1)).squeeze(1) + smoothing * spread).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=64 * 110)
    ap.add_argument("--items", type=int, default=3417)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    h = torch.randn(args.rows, args.dim, requires_grad=True)
    items = torch.randn(args.items, args.dim, requires_grad=True)
    target = torch.randint(1, args.items, (args.rows,))
    ways = {"plain": lambda: full_softmax_loss(h, target, items)[1],
            "smoothed": lambda: full_softmax_loss(h, target, items, 0.1)[1],
            "through log-probabilities": lambda: _through_log_probabilities(h, target, items, 0.1)}
    seconds = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, loss_of in ways.items():  # interleaved, so a noisy minute hits every way alike
            t0 = time.perf_counter()
            loss_of().backward()
            seconds[name].append(time.perf_counter() - t0)
    plain = statistics.median(seconds["plain"])
    for name, values in seconds.items():
        print(f"{name:>26}: {statistics.median(values):.3f} s ({statistics.median(values) / plain:.2f}x plain)")
    with torch.no_grad():
        print(f"losses: smoothed {float(ways['smoothed']()):.6f}, through log-probabilities "
              f"{float(ways['through log-probabilities']()):.6f}")


if __name__ == "__main__":
    main()
