"""spark-submit entry for the 'ope' stage (off-policy estimates from the exposure log): spark-submit jobs/ope.py [--config conf/X.yaml] [--set k=v]."""
import sys

from recsys_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stage="ope"))
