"""Spearman rank correlation, shipped with hf-multitask so that `evaluate.load` needs no network."""

import datasets
import evaluate
from scipy.stats import spearmanr


class Spearman(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Spearman rank correlation between predicted and gold scores.",
            citation="",
            inputs_description="predictions and references: real-valued scores",
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        if len(predictions) < 2:  # undefined, as for constant predictions: NaN, which evaluation warns about
            return {"spearman": float("nan")}
        return {"spearman": float(spearmanr(predictions, references)[0])}
