"""spark-submit entry for the 'forget' stage: spark-submit jobs/forget.py --users FILE [--config conf/X.yaml] [--set k=v]."""
import sys

from recsys_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stage="forget"))
