"""The typed Spark schemas of the tables the product writes (their names: recsys_spark.schema)."""
from __future__ import annotations

from pyspark.sql import types as T

from recsys_spark.schema import BANDIT_FEATURES

EVENTS_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType(), False),
        T.StructField("user_id", T.StringType(), False),
        T.StructField("item_id", T.StringType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField("ts", T.TimestampType(), False),
        T.StructField("rating", T.DoubleType(), True),
        # Input columns beyond the ones above, as strings (null when the input had none).
        T.StructField("attributes", T.MapType(T.StringType(), T.StringType()), True),
        T.StructField("source_file", T.StringType(), True),
        T.StructField("ingest_run_id", T.StringType(), False),
    ]
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("reason", T.StringType(), False),
        T.StructField("source_file", T.StringType(), True),
        T.StructField("raw", T.StringType(), True),  # the offending row as JSON of its raw values
        T.StructField("ingest_run_id", T.StringType(), False),
        T.StructField("quarantined_at", T.TimestampType(), False),
        # sha256 of reason, source_file and raw: the same bad row is quarantined once, however often
        # its file is ingested.
        T.StructField("quarantine_id", T.StringType(), True),
    ]
)

# The output contract (README "Recommendations table"): one partition per run_date; per user ranks
# 1..n (n = score.k, fewer only when fewer items are eligible and unseen); no seen or ineligible
# item; because_item_ids are items of the user's own history.
RECOMMENDATIONS_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("item_id", T.StringType(), False),
        # The model's score (relevance), or the expected value p x price / margin (score.objective).
        T.StructField("score", T.FloatType(), False),
        # Calibrated chance that this is the user's next item (null for popularity lists).
        T.StructField("probability", T.FloatType(), True),
        # Calibrated chance that the user's next step buys this item (null for popularity lists, and
        # where the data has no purchases).
        T.StructField("purchase_probability", T.FloatType(), True),
        # Chance that the serving policy showed this item to this user: 1 unless the item filled an
        # exploration slot (score.explore_slots); what off-policy evaluation weighs feedback by.
        T.StructField("propensity", T.FloatType(), True),
        T.StructField("because_item_ids", T.ArrayType(T.StringType(), False), False),
        # history | profile | segment_popularity | popularity (recsys_spark.schema.SERVED_*)
        T.StructField("served_by", T.StringType(), False),
        T.StructField("model_run_id", T.StringType(), False),
        T.StructField("run_date", T.DateType(), False),
    ]
)

# Campaign audiences (README "Audiences"): per run_date and campaign, users by rank 1..n.
AUDIENCES_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        # Calibrated chance that the user's next new item is one of the campaign's.
        T.StructField("probability", T.DoubleType(), False),
        # Chance that the user's next step buys one of the campaign's items (the probability scaled by
        # the share of next steps that bought a new item); null where the data has no purchases.
        T.StructField("purchase_probability", T.DoubleType(), True),
        # probability / the campaign's mean probability over every scored user (how audiences of
        # different campaigns compare, e.g. for the frequency cap).
        T.StructField("score", T.DoubleType(), False),
        T.StructField("model_run_id", T.StringType(), False),
        T.StructField("run_date", T.DateType(), False),
        T.StructField("campaign_id", T.StringType(), False),
    ]
)

# One row per successful scoring run: what produced each recommendations partition.
SCORE_RUNS_SCHEMA = T.StructType(
    [
        T.StructField("run_date", T.DateType(), False),
        T.StructField("model_run_id", T.StringType(), False),
        T.StructField("mode", T.StringType(), False),  # full | incremental
        T.StructField("mode_reason", T.StringType(), False),
        T.StructField("rules", T.StringType(), False),  # JSON of k and the business rules
        T.StructField("events_version", T.LongType(), False),  # events version the features were built from
        T.StructField("sequences_version", T.LongType(), False),
        T.StructField("user_profile_version", T.LongType(), False),
        T.StructField("eligibility_version", T.LongType(), True),
        T.StructField("recommendations_version", T.LongType(), False),
        T.StructField("users_scored", T.LongType(), False),
        T.StructField("users_carried", T.LongType(), False),
        T.StructField("rows", T.LongType(), False),
        T.StructField("seconds", T.DoubleType(), False),
        T.StructField("finished_at", T.TimestampType(), False),
        # The latest table's version this run left (null: not written, score.write_latest off).
        T.StructField("latest_version", T.LongType(), True),
    ]
)

# Off-policy estimates (recsys_spark.ope): one row per policy, metric and estimator of a run.
OPE_ESTIMATES_SCHEMA = T.StructType(
    [
        T.StructField("estimated_at", T.TimestampType(), False),
        T.StructField("log", T.StringType(), False),  # the exposure log read, and its version
        T.StructField("log_version", T.LongType(), False),
        T.StructField("policy", T.StringType(), False),
        T.StructField("metric", T.StringType(), False),  # clicks | revenue (per logged user)
        T.StructField("estimator", T.StringType(), False),  # logged | DM | IPS | SNIPS | DR
        T.StructField("value", T.DoubleType(), False),
        T.StructField("ci_low", T.DoubleType(), False),
        T.StructField("ci_high", T.DoubleType(), False),
        T.StructField("n_users", T.LongType(), False),
        # Share of the candidate's listed items that the log shows, and the weights' effective sample size.
        T.StructField("matched_share", T.DoubleType(), False),
        T.StructField("ess", T.DoubleType(), False),
        T.StructField("alpha", T.DoubleType(), False),
        T.StructField("night", T.DateType(), True),  # the nightly's lists estimated from (ope.night); null: ope.log
    ]
)

METRICS_SCHEMA = T.StructType(
    [
        T.StructField("eval_run_id", T.StringType(), False),
        T.StructField("model_run_id", T.StringType(), True),
        T.StructField("model", T.StringType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("k", T.IntegerType(), False),
        T.StructField("value", T.DoubleType(), False),
        T.StructField("n_users", T.LongType(), False),
        T.StructField("split", T.StringType(), False),
        T.StructField("evaluated_at", T.TimestampType(), False),
    ]
)

# One row per promotion decision of an evaluation (recsys_spark.promotion): the candidate against
# the champion (or, for a first model, popularity) on the same test users. The serving champion is
# the candidate of the newest row with promoted = true.
MODEL_PROMOTIONS_SCHEMA = T.StructType(
    [
        T.StructField("eval_run_id", T.StringType(), False),
        T.StructField("candidate_run_id", T.StringType(), False),
        T.StructField("reference", T.StringType(), False),  # champion | popularity
        T.StructField("reference_run_id", T.StringType(), True),  # the champion's run id
        T.StructField("metric", T.StringType(), False),
        T.StructField("candidate_value", T.DoubleType(), False),
        T.StructField("reference_value", T.DoubleType(), False),
        T.StructField("tolerance", T.DoubleType(), False),
        T.StructField("promoted", T.BooleanType(), False),
        T.StructField("reason", T.StringType(), False),
        T.StructField("decided_at", T.TimestampType(), False),
    ]
)

# Metrics by slice (kind = activity | user_history | target_item | a user attribute, group = its
# value), fairness gaps (group "<gap>": metric gap / gap_ci_low / gap_ci_high) and item exposure
# (kind = exposure:popularity_decile | exposure:category; metric rec_share / interaction_share / item_share).
METRIC_SLICES_SCHEMA = T.StructType(
    [
        T.StructField("eval_id", T.StringType(), False),
        T.StructField("model_run_id", T.StringType(), True),
        T.StructField("model", T.StringType(), False),
        T.StructField("kind", T.StringType(), False),
        T.StructField("group", T.StringType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("k", T.IntegerType(), False),
        T.StructField("value", T.DoubleType(), False),
        T.StructField("n_users", T.LongType(), True),
        T.StructField("evaluated_at", T.TimestampType(), False),
    ]
)

# The feedback loop's simulation (recsys_spark.bandit): one row per run, day and policy.
BANDIT_DAYS_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("simulated_at", T.TimestampType(), False),
        T.StructField("day", T.IntegerType(), False),
        T.StructField("policy", T.StringType(), False),  # greedy | uniform | bandit
        T.StructField("users", T.LongType(), False),
        # Totals over the day's users: drawn, then expected under the simulator's behaviour.
        T.StructField("clicks", T.DoubleType(), False),
        T.StructField("revenue", T.DoubleType(), False),
        T.StructField("expected_clicks", T.DoubleType(), False),
        T.StructField("expected_revenue", T.DoubleType(), False),
    ]
)

# The re-ranker's state after each day's update: A (row-major, d x d), b and theta = A^-1 b over
# the named features.
BANDIT_STATE_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("updated_at", T.TimestampType(), False),
        T.StructField("day", T.IntegerType(), False),
        T.StructField("n", T.LongType(), False),  # rewards learned from
        T.StructField("features", T.ArrayType(T.StringType()), False),
        T.StructField("a", T.ArrayType(T.DoubleType()), False),
        T.StructField("b", T.ArrayType(T.DoubleType()), False),
        T.StructField("theta", T.ArrayType(T.DoubleType()), False),
        # Serving states (run_id "serving"): the newest run_date whose exposures it has learned.
        T.StructField("learned_through", T.DateType(), True),
    ]
)


BANDIT_EXPOSURES_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("item_id", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        # The features the re-ranker chose by (bandit.FEATURES, as x_<feature>).
        *[T.StructField(f"x_{f}", T.DoubleType(), False) for f in BANDIT_FEATURES],
        # What a purchase of the item earned when it was shown (its price).
        T.StructField("reward_value", T.DoubleType(), False),
        T.StructField("model_run_id", T.StringType(), False),
        T.StructField("run_date", T.DateType(), False),
    ]
)
