"""Names: tables, columns, event types and serving paths live here and nowhere else.

Pure Python (no pyspark), so the config and the torch-only modules can use them. The typed Spark
schemas of the tables the product writes are in recsys_spark.table_schemas.
"""
from __future__ import annotations

# Raw input columns. user_id, item_id, event_type and timestamp are required; the rest optional.
REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("event_id", "rating")
# Event types the product knows, in the order that breaks timestamp ties in a sequence (a view
# before the cart, before the purchase) and that lays out the profile's activity counts.
EVENT_TYPES = ("view", "add_to_cart", "purchase", "rating")
PURCHASE = "purchase"  # the event type a purchase probability is about
# Declared user attributes (any subset may be present in the users input; missing = unknown).
USER_ATTRIBUTE_COLUMNS = ("age_band", "gender", "region", "occupation")
# Categorical item attributes; `tags` holds several values separated by "|" (genres, attribute ids).
ITEM_ATTRIBUTE_COLUMNS = ("category", "brand")
ITEM_TAGS_COLUMN = "tags"
# What an item is (product, offer, article, ...): score.item_kinds ranks one kind of catalog only.
ITEM_KIND_COLUMN = "kind"
DEFAULT_ITEM_KIND = "product"
# What showing an item is worth (score.objective expected_revenue / expected_margin); optional.
ITEM_VALUE_COLUMNS = ("price", "margin")
# The items' column each expected-value objective multiplies the probability by.
OBJECTIVE_VALUE = {"expected_revenue": "price", "expected_margin": "margin"}
TAG_ATTRIBUTE = "tag"
# A dense vector per item from an upstream encoder (image or text embeddings): an array of numbers
# (or, in CSV, a string of numbers); every item should have the same length, a missing one is fine.
ITEM_VECTOR_COLUMN = "embedding"
# The item scaling statistics features computes and the model keeps (gold/feature_stats names).
ITEM_STATISTICS = ("idf", "item_num_mean", "item_num_std", "item_vec_mean", "item_vec_std")

# Delta tables, relative to <paths.root>/tables.
EVENTS = "bronze/events"
QUARANTINE = "bronze/quarantine"
USERS = "silver/users"
ITEMS = "silver/items"
# sha256 of the ids of forgotten users: ingest never loads their rows again.
SUPPRESSED_USERS = "silver/suppressed_users"
USER_INDEX = "gold/user_index"
ITEM_INDEX = "gold/item_index"
ATTRIBUTE_INDEX = "gold/attribute_index"
USER_ITEM = "gold/user_item"
USER_PROFILE = "gold/user_profile"
ITEM_CONTENT = "gold/item_content"
SEQUENCES = "gold/sequences"
FEATURE_STATS = "gold/feature_stats"
TRAIN_EXAMPLES = "gold/train_examples"
# One row per completed features run: the versions of every table it wrote (readers pin a set).
FEATURE_SETS = "gold/feature_sets"
RECOMMENDATIONS = "gold/recommendations"
RECOMMENDATIONS_LATEST = "gold/recommendations_latest"
# Tables merged by a few users at a time (incremental features, the refresh stream) and read only
# through Spark: they keep deletion vectors. The training table is read by file list (Petastorm),
# which cannot apply them.
DELETION_VECTOR_TABLES = (USER_ITEM, SEQUENCES, USER_PROFILE, RECOMMENDATIONS_LATEST)
SCORE_RUNS = "gold/score_runs"
# Campaign audiences: partitioned by run_date and campaign_id.
AUDIENCES = "gold/audiences"
METRICS = "gold/metrics"
METRIC_SLICES = "gold/metric_slices"
# Promotion decisions: which trained model serves (recsys_spark.promotion).
MODEL_PROMOTIONS = "gold/model_promotions"
# Off-policy estimates of candidate policies (recsys_spark.ope), appended per run.
OPE_ESTIMATES = "gold/ope_estimates"
# The feedback loop's simulation (recsys_spark.bandit): rewards per day and policy, and the
# re-ranker's state after each day's update; appended per run.
BANDIT_DAYS = "gold/bandit_days"
BANDIT_STATE = "gold/bandit_state"
# What the serving re-ranker showed each night, with the features it chose by (bandit.serve):
# partitioned by run_date; the rewards it learns from are the events that followed.
BANDIT_EXPOSURES = "gold/bandit_exposures"
# The re-ranker's context features of a (user, item) pair (recsys_spark.bandit), each in [0, 1].
BANDIT_FEATURES = ("constant", "relevance", "popularity", "price", "value")


# How a user's list was made (the recommendations' served_by column): the model over the user's
# history (and profile); the model's profile path alone (no history yet); popularity among users
# with the same declared attributes; global popularity (the model has nothing for this user).
SERVED_HISTORY, SERVED_PROFILE, SERVED_SEGMENT, SERVED_POPULAR = "history", "profile", "segment_popularity", "popularity"
