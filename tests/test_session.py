"""The Spark session: Delta's jars match the installed delta-spark, and a user's own packages and JVM options stay."""
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


def test_configured_driver_java_options_keep_the_metastore_home_and_quiet_logging():
    from recsys_spark.session import QUIET_LOG4J, driver_java_options

    quiet = f"-Dlog4j2.configurationFile=file:{QUIET_LOG4J}"
    assert driver_java_options("", None, False) == ""
    assert driver_java_options("", "/m", True) == f"-Dderby.system.home=/m {quiet}"
    # A user's own flags (a garbage collector, say) come after the built-in ones, which stay.
    assert driver_java_options("-XX:+UseParallelGC", "/m", True) == f"-Dderby.system.home=/m {quiet} -XX:+UseParallelGC"
    # A user's own log4j file replaces the quiet one.
    own = "-Dlog4j2.configurationFile=file:/etc/mine.properties"
    assert driver_java_options(own, None, True) == own
