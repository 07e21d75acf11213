"""spark-submit entry for the 'ingest' stage: spark-submit jobs/ingest.py [--config conf/X.yaml] [--set k=v]."""
import sys

from recsys_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stage="ingest"))
