"""The Spark session: Delta's jars match the installed delta-spark, and a user's own packages stay."""
import importlib.metadata

from recsys_spark.session import delta_package, jars_packages


def test_delta_coordinate_comes_from_the_installed_delta_spark():
    assert delta_package() == f"io.delta:delta-spark_2.12:{importlib.metadata.version('delta-spark')}"


def test_user_packages_are_kept_and_delta_is_added_once():
    kafka = "org.apache.spark:spark-sql-kafka-0-10_2.12:3.5.3"
    assert jars_packages("") == delta_package()
    assert jars_packages(f"{kafka}, ") == f"{kafka},{delta_package()}"
    own_delta = "io.delta:delta-spark_2.12:3.3.0"
    assert jars_packages(f"{kafka},{own_delta}") == f"{kafka},{own_delta}"
