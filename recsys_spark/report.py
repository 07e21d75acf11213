"""`python -m recsys_spark report`: a self-contained HTML report of the latest evaluation.

Written to <paths.root>/reports/<eval_id>.html (and latest.html): headline metrics of the attention
model against the baselines and against the previous evaluation, NDCG@10 by activity bucket, the
exposure Lorenz curve and popularity-bias bars (by item-popularity decile), training curves, the
A/B readout with intervals (when gold/ab_log exists), the simulated feedback loop's cumulative
revenue (when gold/bandit_days exists), and a few users with their history,
recommendations and explanations. Plots are PNGs embedded as data URIs: the file has no external
references.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import os
import shutil
from typing import Optional

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import checkpoints, schema, tables
from recsys_spark.abtest import format_readout, readout, variant_stats
from recsys_spark.config import Config
from recsys_spark.evaluate import CALIBRATION, PURCHASE_PREFIX

logger = logging.getLogger(__name__)

HEADLINE = [("recall", 10), ("ndcg", 10), ("mrr", 10), ("coverage", 10), ("gini", 10), ("novelty", 10),
            ("ild", 10), ("pop_share", 10)]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _by_model(models) -> list:
    return sorted(models, key=lambda m: (m != "attention", m))


def _activity_figure(plt, np, slices) -> Optional[str]:
    act = slices[(slices.kind == "activity") & (slices.metric == "ndcg")]
    if not len(act):
        return None
    order = ["0-4", "5-9", "10-19", "20-49", "50+"]
    models = _by_model(act.model.unique())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / len(models)
    for j, m in enumerate(models):
        part = act[act.model == m].set_index("group").reindex(order)
        ax.bar(np.arange(len(order)) + j * width, part["value"].fillna(0), width, label=m)
    ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2, order)
    ax.set_xlabel("history length (items)")
    ax.set_ylabel("NDCG@10")
    ax.legend(fontsize=8)
    return _png(fig)


def _exposure_figure(plt, np, slices) -> Optional[str]:
    dec = slices[(slices.kind == "exposure:popularity_decile")]
    if not len(dec):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for m in _by_model(dec.model.unique()):
        share = dec[(dec.model == m) & (dec.metric == "rec_share")].copy()
        share["g"] = share.group.astype(int)
        share = share.sort_values("g", ascending=False)  # least popular decile first
        ax1.plot(np.r_[0, np.arange(1, len(share) + 1) / len(share)], np.r_[0, share.value.cumsum()], marker=".", label=m)
    ax1.plot([0, 1], [0, 1], "k--", lw=0.8, label="equal exposure")
    ax1.set_xlabel("cumulative share of items (least popular first)")
    ax1.set_ylabel("cumulative share of recommendations")
    ax1.set_title("exposure Lorenz curve (by popularity decile)", fontsize=9)
    ax1.legend(fontsize=8)
    att = dec[dec.model == "attention"].copy()
    att["g"] = att.group.astype(int)
    rec = att[att.metric == "rec_share"].sort_values("g")
    inter = att[att.metric == "interaction_share"].sort_values("g")
    x = np.arange(len(rec))
    ax2.bar(x - 0.2, rec.value, 0.4, label="attention recommendations")
    ax2.bar(x + 0.2, inter.value, 0.4, label="interactions")
    ax2.set_xticks(x, rec.g)
    ax2.set_xlabel("item popularity decile (1 = most popular)")
    ax2.set_ylabel("share")
    ax2.set_title("popularity bias", fontsize=9)
    ax2.legend(fontsize=8)
    return _png(fig)


def _training_figure(plt, np, history: list) -> Optional[str]:
    if not history:
        return None
    fig, ax1 = plt.subplots(figsize=(6, 3.2))
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["loss"] for h in history], "b.-", label="training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss", color="b")
    if any("valid_ndcg@10" in h for h in history):
        ax2 = ax1.twinx()
        ax2.plot(ep, [h.get("valid_ndcg@10", np.nan) for h in history], "r.-")
        ax2.set_ylabel("validation NDCG@10", color="r")
    return _png(fig)


def _ab_figure(plt, ab: Optional[dict]) -> Optional[str]:
    if not ab:
        return None
    rows = [(f"{v}: {m}", res[m]) for v, res in ab["variants"].items() for m in ("ctr", "conversion", "revenue_per_user")]
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(rows)))
    for i, (label, x) in enumerate(rows):
        c = x["control"] or 1.0
        ax.errorbar([x["diff"] / c], [i], xerr=[[(x["diff"] - x["ci_low"]) / c], [(x["ci_high"] - x["diff"]) / c]],
                    fmt="o", capsize=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlabel(f"relative lift vs {ab['control']} ({int(round((1 - ab['alpha']) * 100))}% CI)")
    return _png(fig)


def bandit_figure(plt, days) -> Optional[str]:
    """The latest bandit-simulate run: cumulative revenue per user by day (drawn), and each day's
    expected revenue per user (the learning curve, without the luck of the draws)."""
    if days is None or not len(days):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for policy in ("bandit", "greedy", "uniform"):
        part = days[days.policy == policy].sort_values("day")
        if not len(part):
            continue
        ax1.plot(part.day + 1, (part.revenue / part.users).cumsum(), marker=".", label=policy)
        ax2.plot(part.day + 1, part.expected_revenue / part.users, marker=".", label=policy)
    ax1.set_xlabel("simulated day")
    ax1.set_ylabel("cumulative revenue per user")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("simulated day")
    ax2.set_ylabel("expected revenue per user that day")
    return _png(fig)


def _reliability_figure(plt, np, slices) -> Optional[str]:
    """Reliability diagram: mean predicted next-item probability against the observed hit rate."""
    cal = slices[slices.kind == "calibration"]
    if not len(cal):
        return None
    fig, ax = plt.subplots(figsize=(4.2, 4))
    top = 0.0
    for m in _by_model(cal.model.unique()):
        part = cal[cal.model == m].pivot_table(index="group", columns="metric", values="value")
        part = part.sort_values("p")
        ax.plot(part["p"], part["hit_rate"], marker="o", label=m)
        top = max(top, float(part["p"].max()), float(part["hit_rate"].max()))
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlabel("predicted probability (top-10 items, bins of equal size)")
    ax.set_ylabel("observed: was the next item")
    ax.legend(fontsize=8)
    return _png(fig)


def _calibration_table(cur, models: list[str]) -> str:
    def rows(prefix: str) -> list:
        return [[m] + [f"{v:.4f}" if (v := _value(cur, m, prefix + metric, 10)) is not None else ""
                       for metric in CALIBRATION]
                for m in models if _value(cur, m, prefix + "log_loss", 10) is not None]

    interaction, purchase = rows(""), rows(PURCHASE_PREFIX)
    if not interaction:
        return "<p>No calibration figures in this evaluation.</p>"
    html = ("<p>How far the calibrated next-item probabilities (in the recommendations and audiences tables) can be "
            "taken at their word, on the test users: log loss of the item each user picked next (lower is better), "
            "Brier score and expected calibration error over each top-10 (lower is better), AUC of the next item "
            "against every other item the user could be shown.</p>"
            + _table(["model"] + list(CALIBRATION), interaction))
    if purchase:
        html += ("<p>The purchase probabilities (<code>purchase_probability</code>): the same figures for \"the "
                 "user's next step buys this item\" (a next step that bought nothing counts against every item).</p>"
                 + _table(["model"] + list(CALIBRATION), purchase))
    return html


def _figures(slices, history: list, ab: Optional[dict], bandit_days=None) -> dict[str, str]:
    """The report's plots as data URIs, by section: activity, exposure, training, ab, reliability,
    bandit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figs = {"activity": _activity_figure(plt, np, slices), "exposure": _exposure_figure(plt, np, slices),
            "training": _training_figure(plt, np, history), "ab": _ab_figure(plt, ab),
            "reliability": _reliability_figure(plt, np, slices), "bandit": bandit_figure(plt, bandit_days)}
    return {k: v for k, v in figs.items() if v is not None}


def _table(headers: list[str], rows: list[list]) -> str:
    """An HTML table; every header and cell is text (escaped): values from the data never become markup."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _value(df, model: str, metric: str, k: int) -> Optional[float]:
    v = df[(df.model == model) & (df.metric == metric) & (df.k == k)].value
    return float(v.iloc[0]) if len(v) else None


def _headline(cur, models: list[str]) -> str:
    rows = [[m] + [f"{v:.4f}" if (v := _value(cur, m, metric, k)) is not None else "" for metric, k in HEADLINE]
            for m in models]
    return _table(["model"] + [f"{m}@{k}" for m, k in HEADLINE], rows)


def _comparison(metrics, cur, eval_id: str, prev_id: Optional[str], model_run_id: str) -> str:
    """The attention model against the previous evaluation."""
    if prev_id is None:
        return "<p>No previous evaluation to compare with.</p>"
    prev = metrics[metrics.eval_run_id == prev_id]
    crow = []
    for metric, k in HEADLINE:
        a, b = _value(cur, "attention", metric, k), _value(prev, "attention", metric, k)
        if a is not None and b is not None:
            crow.append([f"{metric}@{k}", f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}"])
    return (f"<p>Attention model, this evaluation ({html.escape(eval_id)}, model {html.escape(str(model_run_id))}) "
            f"vs the previous one ({html.escape(prev_id)}, model {html.escape(str(prev.model_run_id.iloc[0]))}):</p>"
            + _table(["metric", "previous", "this run", "change"], crow))


def _gaps(slices) -> str:
    if slices is None:
        return ""
    g = slices[(slices.group == "<gap>") & (slices.model == "attention")].pivot_table(index="kind", columns="metric",
                                                                                       values="value")
    if not len(g):
        return ""
    return _table(["slice", "NDCG@10 gap", "95% bootstrap CI"],
                  [[k, f"{r.ndcg_gap:.3f}", f"[{r.ndcg_gap_ci_low:.3f}, {r.ndcg_gap_ci_high:.3f}]"] for k, r in g.iterrows()])


def _cold_section(cold) -> str:
    if not len(cold):
        return ""
    crow = []
    for (split, model), part in cold.groupby(["split", "model"], sort=True):
        get = lambda metric: part[part.metric == metric].value  # noqa: E731
        crow.append([split, model, int(part.n_users.iloc[0])]
                    + [f"{float(get(m).iloc[0]):.4f}" if len(get(m)) else "" for m in ("recall", "ndcg")])
    return ("<h2>Cold start</h2><p>Held-out users (profile plus their first N events) and held-out "
            "items (never seen in training), full ranking.</p>"
            + _table(["split", "model", "users", "recall@10", "ndcg@10"], crow))


def _ab(spark: SparkSession, cfg: Config) -> tuple[Optional[dict], str]:
    """The A/B readout of abtest.log and its text, when the log exists."""
    loc = tables.locate(cfg.tables_root, cfg.abtest.log)
    if not tables.exists(spark, loc):
        return None, ""
    ab = readout(variant_stats(tables.read(spark, loc)), cfg.abtest.control, cfg.abtest.alpha, cfg.abtest.power,
                 cfg.abtest.split or None)
    return ab, format_readout(ab)


def _bandit_days(spark: SparkSession, root: str):
    """gold/bandit_days of the latest bandit-simulate run (pandas), or None."""
    loc = tables.location(root, schema.BANDIT_DAYS)
    if not tables.exists(spark, loc):
        return None
    days = tables.read(spark, loc)
    latest = days.orderBy(F.desc("simulated_at")).select("run_id").first()
    return days.where(F.col("run_id") == latest.run_id).toPandas() if latest else None


def _bandit_section(days) -> str:
    if days is None:
        return "<p>No simulated feedback loop yet (<code>bandit-simulate</code> writes gold/bandit_days).</p>"
    per = days.groupby("policy")[["clicks", "revenue", "expected_clicks", "expected_revenue"]].sum()
    scale = days.groupby("policy").users.max() * days.day.nunique()
    rows = [[p] + [f"{per.loc[p, m] / scale[p]:.4f}" for m in per.columns] for p in ("bandit", "greedy", "uniform")
            if p in per.index]
    return (f"<p>Simulated run {html.escape(str(days.run_id.iloc[0]))}: {days.day.nunique()} days on "
            f"{int(days.users.max())} test users of the synthetic shop. bandit: a LinUCB re-ranker of the model's "
            f"candidates, updated each night from the rewards of what it showed; greedy: the model's top list; "
            f"uniform: candidates drawn at random. Per user and day:</p>"
            + _table(["policy", "clicks", "revenue", "expected clicks", "expected revenue"], rows))


def _training_history(cfg: Config, model_run_id: str) -> list:
    try:
        return checkpoints.manifest(checkpoints.latest(cfg.models_dir, str(model_run_id))).get("history", [])
    except FileNotFoundError:
        return []


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px; overflow-x: auto; }
img { max-width: 100%; }
.user { margin-bottom: 14px; }
"""


def _document(eval_id: str, model_run_id: str, n_users: int, sections: dict, figs: dict, ab: Optional[dict],
              ab_text: str) -> str:
    img = lambda key, alt: f'<img alt="{alt}" src="{figs[key]}">' if key in figs else f"<p>({alt}: no data)</p>"  # noqa: E731
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>recsys-spark report {html.escape(eval_id)}</title>
<style>{STYLE}</style></head><body>
<h1>recsys-spark evaluation report</h1>
<p>Evaluation <b>{html.escape(eval_id)}</b> of model <b>{html.escape(str(model_run_id))}</b> on
{n_users} test users: full ranking, history removed, one held-out item per user.</p>
<h2>Headline metrics</h2>{sections["headline"]}
<h2>Against the previous run</h2>{sections["comparison"]}
<h2>Who is served well</h2>{img("activity", "NDCG@10 by activity bucket")}{sections["gaps"]}{sections["groups"]}{sections["cold"]}
<h2>Probabilities</h2>{sections["calibration"]}{img("reliability", "reliability diagram")}
<h2>Exposure</h2>{img("exposure", "exposure Lorenz curve and popularity bias")}
<h2>Training</h2>{img("training", "training curves")}
<h2>Feedback loop</h2>{sections["bandit"]}{img("bandit", "cumulative revenue of the feedback loop") if "bandit" in figs else ""}
<h2>A/B test</h2>{img("ab", "A/B lift with intervals") if ab else "<p>No A/B log (gold/ab_log).</p>"}
{f"<pre>{html.escape(ab_text)}</pre>" if ab_text else ""}
<h2>Example users</h2>{sections["examples"]}
</body></html>
"""


def run(spark: SparkSession, cfg: Config, n_examples: int = 3) -> str:
    """Write <paths.root>/reports/<eval_id>.html and latest.html for the latest evaluation."""
    root = cfg.tables_root
    mloc = tables.location(root, schema.METRICS)
    tables.require(spark, mloc, "evaluate")
    every = tables.read(spark, mloc).toPandas()
    metrics = every[every.split == "test"]  # the headline: warm test users; cold-start splits below
    evals = metrics.groupby("eval_run_id").evaluated_at.max().sort_values()
    eval_id = evals.index[-1]
    prev_id = evals.index[-2] if len(evals) > 1 else None
    cur = metrics[metrics.eval_run_id == eval_id]
    model_run_id = cur.model_run_id.iloc[0]
    sloc = tables.location(root, schema.METRIC_SLICES)
    slices = tables.read(spark, sloc).where(F.col("eval_id") == eval_id).toPandas() if tables.exists(spark, sloc) else None
    models = _by_model(cur.model.unique())
    ab, ab_text = _ab(spark, cfg)
    history = _training_history(cfg, model_run_id)
    bandit_days = _bandit_days(spark, root)
    figs = (_figures(slices, history, ab, bandit_days) if slices is not None
            else _figures_empty(history, ab, bandit_days))
    sections = {
        "headline": _headline(cur, models), "calibration": _calibration_table(cur, models), "comparison": _comparison(metrics, cur, eval_id, prev_id, model_run_id),
        "gaps": _gaps(slices), "groups": _group_table(slices, models) if slices is not None else "",
        "cold": _cold_section(every[(every.eval_run_id == eval_id) & (every.split != "test") & (every.k == 10)]),
        "examples": _examples(spark, cfg, n_examples), "bandit": _bandit_section(bandit_days),
    }
    doc = _document(eval_id, model_run_id, int(cur.n_users.iloc[0]), sections, figs, ab, ab_text)
    out_dir = cfg.reports_dir
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{eval_id}.html")
    with open(path, "w") as fh:
        fh.write(doc)
    shutil.copyfile(path, os.path.join(out_dir, "latest.html"))
    logger.info(f"report: {path} ({len(doc) // 1024} KB, {len(figs)} plots)")
    return path


def _group_table(slices, models: list[str]) -> str:
    """NDCG@10 of every model by declared user group (gender, age band, ...), with group sizes."""
    part = slices[(slices.metric == "ndcg") & (slices.group != "<gap>") & (slices.kind != "activity")
                  & ~slices.kind.str.startswith("exposure:")]
    if not len(part):
        return ""
    wide = part.pivot_table(index=["kind", "group"], columns="model", values="value", sort=False)
    sizes = part.groupby(["kind", "group"], sort=False).n_users.max()
    cols = [m for m in models if m in wide.columns]
    rows = [[kind, group, int(sizes[(kind, group)])] + [f"{wide.loc[(kind, group), m]:.4f}" for m in cols]
            for kind, group in wide.index]
    return ("<h3>NDCG@10 by user group</h3>"
            + _table(["attribute", "group", "users"] + [f"{m} NDCG@10" for m in cols], rows))


def _figures_empty(history, ab, bandit_days=None):
    import pandas as pd

    return _figures(pd.DataFrame(columns=["kind", "metric", "model", "group", "value"]), history, ab, bandit_days)


def _examples(spark: SparkSession, cfg: Config, n: int) -> str:
    root = cfg.tables_root
    latest = tables.location(root, schema.RECOMMENDATIONS_LATEST)
    if not tables.exists(spark, latest):
        return "<p>No recommendations yet.</p>"
    recs = tables.read(spark, latest)
    users = [r.user_id for r in recs.select("user_id").distinct().orderBy("user_id").limit(n).collect()]
    titles = {r.item_id: r.title for r in tables.read(spark, tables.location(root, schema.ITEM_CONTENT))
              .select("item_id", F.coalesce("title", "item_id").alias("title")).collect()}
    index = tables.read(spark, tables.location(root, schema.ITEM_INDEX))
    seqs = tables.read(spark, tables.location(root, schema.SEQUENCES)).where(F.col("user_id").isin(users))
    hist = {}
    for r in (seqs.select("user_id", F.posexplode("items").alias("pos", "item_idx")).join(index, "item_idx")
              .orderBy("user_id", "pos").collect()):
        hist.setdefault(r.user_id, []).append(titles.get(r.item_id, r.item_id))
    parts = []
    for u in users:
        rows = recs.where(F.col("user_id") == u).orderBy("rank").collect()
        table = _table(["rank", "item", "score", "because you viewed"],
                       [[r.rank, titles.get(r.item_id, r.item_id), f"{r.score:.3f}",
                         ", ".join(titles.get(i, i) for i in (r.because_item_ids or []))] for r in rows])
        recent = ", ".join(hist.get(u, [])[-8:])
        parts.append(f'<div class="user"><h3>{html.escape(u)}</h3><p>Recent history: {html.escape(recent)}</p>{table}</div>')
    return "".join(parts)
