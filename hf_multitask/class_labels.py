"""A dataset's `ClassLabel` names against a task's `label_names`: the one rule for data handed to the trainer
(`conventions.task_datasets`) and data read by the loader (`data.load_task_data`), docs/conventions.md."""

from __future__ import annotations

import copy

import pyarrow.compute as pc
from datasets import ClassLabel, Dataset
from transformers.utils import logging

from .kinds import DataValidationError

logger = logging.get_logger(__name__)


def class_label_ids(dataset, spec, where: str, column: str = "labels"):
    """`dataset` with the ids of a `ClassLabel` column (or a list of them: tags per word) in the order of the task's
    `label_names`, as run_glue.py maps a dataset's label names onto the model's. Names are matched without regard to
    case, as `Dataset.align_labels_with_mapping` matches them: the same names in another order are remapped (with a
    warning); names partly the task's, and two names that are one when lower-cased, are an error; names none of
    which are the task's (`LABEL_0`, ...) leave the ids as they are, with a warning. The remap runs on the
    unformatted data and keeps the dataset's format (torch, numpy, a transform).

    Args:
        dataset: A `datasets.Dataset` (anything else is returned as it is).
        spec: The task.
        where: What errors and warnings start with (the argument and task, or the file).
        column: The label column: `labels` for tokenised data, the task's `label_column` for a file.
    """
    feature_of_column = dataset.features.get(column) if isinstance(dataset, Dataset) else None
    feature = getattr(feature_of_column, "feature", feature_of_column)  # List(ClassLabel): tags per word
    if not isinstance(feature, ClassLabel) or not spec.label_names or list(feature.names) == list(spec.label_names):
        return dataset
    theirs, ours = list(feature.names), list(spec.label_names)
    folded, folded_ours = [name.lower() for name in theirs], [name.lower() for name in ours]
    if not set(folded) & set(folded_ours):
        logger.warning_once(f"{where}: the dataset's ClassLabel names {theirs} are none of task {spec.name!r}'s "
                            f"label_names {ours}: its ids are read as the task's ("
                            f"{', '.join(f'{i} = {name!r}' for i, name in enumerate(ours))})")
        return dataset
    _check_case_collisions(theirs, "the dataset's ClassLabel names", where)
    _check_case_collisions(ours, f"task {spec.name!r}'s label_names", where)
    if sorted(folded) != sorted(folded_ours):
        raise DataValidationError(f"{where}: column {column!r} is a ClassLabel with names {theirs}, but task "
                                  f"{spec.name!r} has label_names {ours}: rename or cast the dataset's labels "
                                  "(Dataset.align_labels_with_mapping, cast_column) to the task's names")
    if folded == folded_ours:
        return dataset  # the same names up to case, in the same order: the ids agree
    ids = dataset.with_format("arrow")[column]
    lowest = pc.min(pc.list_flatten(ids) if feature is not feature_of_column else ids).as_py()
    if lowest is not None and lowest < 0:
        return dataset  # GLUE's test splits (-1): refused by the label check, which names the row
    case = "" if sorted(theirs) == sorted(ours) else "; names matched without regard to case"
    logger.warning_once(f"{where}: the dataset's ClassLabel names {theirs} are the task's label_names in "
                        f"another order ({ours}{case}); its label ids are remapped to the task's")
    return _remapped(dataset, column, ours, [folded_ours.index(name) for name in folded])


def _check_case_collisions(names: list[str], whose: str, where: str) -> None:
    first = {}
    for name in names:
        other = first.setdefault(name.lower(), name)
        if other != name:
            raise DataValidationError(f"{where}: {whose} {names} hold {other!r} and {name!r}, one name when "
                                      "lower-cased; ClassLabel names are matched to a task's label_names without "
                                      "regard to case (as Dataset.align_labels_with_mapping does): rename one")


def _remapped(dataset: Dataset, column: str, ours: list[str], to_ours: list[int]) -> Dataset:
    """`dataset` with each id `t` of `column` as `to_ours[t]` and the task's names `ours` in its feature, computed
    on the unformatted data (map() hands its function batches in the dataset's format: torch, numpy) and returned in
    the dataset's format."""
    plain, feature_of_column = dataset.with_format(None), dataset.features[column]
    if isinstance(feature_of_column, ClassLabel):
        remapped = plain.align_labels_with_mapping({name: i for i, name in enumerate(ours)}, column)
    else:  # tags per word: datasets' method takes one ClassLabel only
        features = dataset.features.copy()
        features[column] = copy.deepcopy(feature_of_column)
        features[column].feature = ClassLabel(names=ours)
        remapped = plain.map(lambda batch: {column: [[to_ours[t] if t >= 0 else t for t in row]
                                                     for row in batch[column]]}, batched=True, features=features,
                             desc="Remapping tag ids")
    form = dataset.format  # the user's format back: torch, numpy, a transform, the columns it shows
    return remapped.with_format(form["type"], columns=form["columns"], output_all_columns=form["output_all_columns"],
                                **form["format_kwargs"])
