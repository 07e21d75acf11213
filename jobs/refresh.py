"""spark-submit entry for the 'refresh' stage (streaming refresh of active users' lists): spark-submit jobs/refresh.py [--once] [--config conf/X.yaml] [--set k=v]."""
import sys

from recsys_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stage="refresh"))
