"""spark-submit entry for the 'abtest' stage (A/B readout): spark-submit jobs/abtest.py [--config conf/X.yaml] [--set k=v]."""
import sys

from recsys_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stage="abtest"))
