"""spark-submit entry for the 'bandit-simulate' stage (a LinUCB re-ranker learning over simulated days on the synthetic shop): spark-submit jobs/bandit_simulate.py [--config conf/X.yaml] [--set k=v]."""
import sys

from recsys_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stage="bandit-simulate"))
