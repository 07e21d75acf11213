"""What a shown item earned: the outcome of each logged exposure, from the events that followed it.

One definition for every reader of logged lists (the serving bandit's learning, off-policy
evaluation of a nightly): a shown item is clicked when the user had any event on it within `days`
days from the night it was shown, and earns its reward value (the item's price) when one of those
events was a purchase. A position or the rest of the list plays no part.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema

# Outcome columns of an exposure log, by the metric estimated from them per user.
REWARDS = {"clicks": "clicked", "revenue": "revenue"}


def window_closes(night: date, days: int) -> date:
    """The first day whose events no longer reward what `night` showed: its rewards are all in then."""
    return night + timedelta(days=days)


def rewarded(shown: DataFrame, events: DataFrame, night: date, days: int) -> DataFrame:
    """The items shown on `night` (user_id, item_id, reward_value and any other columns) with their
    rewards: clicked (1 when the user had any event on the item within `days` days from the night)
    and revenue (reward_value when one of those events was a purchase, else 0)."""
    start, end = datetime.combine(night, time.min), datetime.combine(window_closes(night, days), time.min)
    window = (events.where((F.col("ts") >= F.lit(start)) & (F.col("ts") < F.lit(end)))
              .groupBy("user_id", "item_id")
              .agg(F.max((F.col("event_type") == F.lit(schema.PURCHASE)).cast("int")).alias("_bought")))
    out = shown.join(window, ["user_id", "item_id"], "left")
    return (out.withColumn("clicked", F.col("_bought").isNotNull().cast("double"))
            .withColumn("revenue", F.when(F.col("_bought") == 1, F.col("reward_value")).otherwise(F.lit(0.0)))
            .drop("_bought"))
