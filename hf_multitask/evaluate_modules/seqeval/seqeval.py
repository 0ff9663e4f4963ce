"""Entity-level precision, recall and F1 (and token accuracy) by seqeval, shipped with hf-multitask so that
`evaluate.load` needs no network (the Hub's `seqeval` module computes the same with the same library)."""

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import BILOU, IOB1, IOB2, IOBES, IOE1, IOE2

SCHEMES = {"IOB1": IOB1, "IOB2": IOB2, "IOE1": IOE1, "IOE2": IOE2, "IOBES": IOBES, "BILOU": BILOU}


class Seqeval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Entity-level micro precision, recall and F1 (seqeval), and the share of tags right.",
            citation="Nakayama, seqeval: a Python framework for sequence labeling evaluation (2018)",
            inputs_description="predictions and references: one list of tags (strings) per sequence",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references, scheme=None):
        """`scheme=None`: seqeval's default mode (as conlleval: an `I-` tag that follows no `B-` opens an entity);
        a scheme name (`"IOB2"`, ...): seqeval's strict mode with that scheme (such a tag is no entity)."""
        strict = {"mode": "strict", "scheme": SCHEMES[scheme]} if scheme else {}
        report = classification_report(references, predictions, output_dict=True, zero_division=0, **strict)
        micro = report.pop("micro avg")
        out = {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
               "f1": float(micro["f1-score"]), "accuracy": float(accuracy_score(references, predictions))}
        out.update({name: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                           "f1": float(v["f1-score"]), "number": int(v["support"])}
                    for name, v in report.items() if not name.endswith(" avg")})
        return out
