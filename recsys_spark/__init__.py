"""recsys-spark: a batch sequential recommender on Spark, Delta Lake, Petastorm and Horovod."""

__version__ = "0.1.0"
