"""The attention model as an MLflow pyfunc model (MLflow "models from code": this file is logged
with each trained model and run by MLflow when the model is loaded; nothing is pickled).

Input: a column `history` of item index arrays (gold/item_index numbering, oldest first). Output:
`items` (the top-k item indexes, history removed) and `scores`. Parameter `k` (default 10). The
checkpoint travels as the model's artifact and loads weights-only (recsys_spark.checkpoints).
`mlflow.pyfunc.load_model("models:/<name>@champion")` serves the same model the nightly scores with.
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch


class AttentionTopK(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from recsys_spark import checkpoints

        self.model, _ = checkpoints.load(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from recsys_spark.ranking import encode_users
        from recsys_spark.topk import topk_excluding

        k = int((params or {}).get("k", 10))
        n_items = self.model.cfg.n_items
        histories = [np.asarray(h if h is not None else (), dtype=np.int64) for h in model_input["history"]]
        histories = [h[(h > 0) & (h < n_items)] for h in histories]
        ineligible = torch.zeros(n_items, dtype=torch.bool)
        ineligible[0] = True  # padding
        with torch.no_grad():
            items = self.model.item_vectors()
            users = encode_users(self.model, histories, items=items)
            top, scores = topk_excluding(users, items, histories, k, ineligible=ineligible)
        return pd.DataFrame({"items": [list(map(int, t)) for t in top], "scores": [list(map(float, s)) for s in scores]})


mlflow.models.set_model(AttentionTopK())
