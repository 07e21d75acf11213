"""Personal data: pseudonymous user ids, the user columns that may be kept, secrets kept out of
saved configs.

- privacy.pseudonymize replaces every user id at ingest by HMAC-SHA256(key, id) (the first 128
  bits, hex, prefixed "p"): stable across runs with the same key, not reversible without it. The key
  comes from an environment variable (privacy.key_env) or, on Databricks, a secret scope
  (privacy.key_secret: "scope/key"); a config file names where it is, never the key.
- privacy.user_columns lists the user attributes that reach silver/users; other columns of the
  users input are dropped at ingest, and named.
- redacted(config dict) masks secret-looking values (keys naming a secret, password, token,
  credential or access key; the user:password part of URIs) before a config is saved with a model
  or sent to MLflow.
"""
from __future__ import annotations

import hmac
import os
import re
from typing import Any

import pandas as pd

from recsys_spark.config import PrivacyConfig

MIN_KEY_CHARS = 16
SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|private[._-]?key|access[._-]?key", re.I)
URI_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
MASK = "***"


class PrivacyError(ValueError):
    """Pseudonymization cannot run as configured; the message says what to set."""


def pseudonym_key(cfg: PrivacyConfig, spark=None) -> bytes:
    """The HMAC key, from the Databricks secret privacy.key_secret or the environment variable
    privacy.key_env."""
    if cfg.key_secret:
        scope, _, name = cfg.key_secret.partition("/")
        try:
            from pyspark.dbutils import DBUtils  # only on Databricks
        except ImportError:
            raise PrivacyError(f"privacy.key_secret is {cfg.key_secret!r}, but secret scopes exist only on "
                               f"Databricks; elsewhere set privacy.key_env to an environment variable") from None
        key = DBUtils(spark).secrets.get(scope=scope, key=name)
    else:
        key = os.environ.get(cfg.key_env, "")
    if len(key) < MIN_KEY_CHARS:
        where = f"secret {cfg.key_secret}" if cfg.key_secret else f"environment variable {cfg.key_env}"
        raise PrivacyError(f"privacy.pseudonymize is on but the {where} holds {'no key' if not key else 'a key'} "
                           f"{'' if not key else f'of {len(key)} characters '}(at least {MIN_KEY_CHARS} needed). "
                           f"Set it to a long random value and keep it: another key gives every user a new id.")
    return key.encode("utf-8")


def pseudonym(user_id: str | None, key: bytes) -> str | None:
    """One id's pseudonym; null and empty ids stay as they are (ingest quarantines them)."""
    if user_id is None or user_id == "":
        return user_id
    return "p" + hmac.new(key, user_id.encode("utf-8"), "sha256").hexdigest()[:32]


def pseudonymize(col, key: bytes):
    """A Spark column of pseudonyms of col (trimmed). The key travels inside the function's closure
    to the executors, never as a literal in the query plan (which the Spark UI and logs show)."""
    from pyspark.sql import functions as F

    @F.pandas_udf("string")
    def pseudonyms(ids: pd.Series) -> pd.Series:
        return ids.map(lambda v: pseudonym(v, key))

    return pseudonyms(F.trim(col.cast("string")))


def redacted(value: Any, key: str = "") -> Any:
    """A copy of a config dict with secret-looking values masked."""
    if isinstance(value, dict):
        return {k: redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, key) for v in value]
    if isinstance(value, str):
        if value and SECRET_KEY.search(key):
            return MASK
        return URI_USERINFO.sub(MASK + "@", value)
    return value
