"""Hugging Face conventions in [`MultitaskTrainer`]: what an HF fine-tuning script passes either works as it would
in `Trainer` or is refused when the trainer is built, with a message that says what to change (docs/conventions.md).

- datasets: `{task_name: Dataset}`, or one `Dataset` for a model with one task; a `label` (or `label_ids`) column
  works like `labels`; every tokenised dataset is validated against its task's spec ([`validate_tokenized`]);
- collators: `DataCollatorWithPadding`, `DataCollatorForTokenClassification` and `DataCollatorForMultipleChoice`
  become a [`MultitaskCollator`]; one that cannot handle a batch of one task
  (with its `task_name`) is refused; without a collator a tokenizer (`processing_class`) is required;
- the model must be multitask (have `specs`), or a peft wrapper of one;
- `train_sampling_strategy`: `group_by_length` maps onto our length grouping; `sequential` and `batch_rebalance` are
  refused;
- `label_smoothing_factor`, `compute_loss_func`, `preprocess_logits_for_metrics`, `include_for_metrics`,
  `eval_do_concat_batches=False`: refused (each task's kind computes its loss and metrics); `metric_for_best_model`
  must name a metric evaluation reports;
- a `ClassLabel` label column whose names are the task's in another order is remapped to the task's ids
  ([`class_label_ids`], in class_labels.py; the loader follows the same rule);
- `compute_metrics`: one callable for a one-task model, `{task_name: callable}`, or a callable with a `task_name`
  parameter ([`scope_compute_metrics`]); [`user_task_metrics`] files its results under `<prefix>_<task>_<name>`.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Collection, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from transformers import DataCollatorForMultipleChoice, DataCollatorForTokenClassification, DataCollatorWithPadding
from transformers.trainer_utils import denumpify_detensorize
from transformers.utils import logging

from .class_labels import class_label_ids
from .data import HF_LABEL_COLUMNS, MultitaskCollator, MultitaskDataset, check_sized
from .kinds import PAIR_SUFFIX, DataValidationError
from .metrics import metric_key

logger = logging.get_logger(__name__)

# The HF collators that pad a batch the way each task's kind does (sentences, choices, token labels with -100): a
# MultitaskCollator replaces them
HF_PADDING_COLLATORS = (DataCollatorWithPadding, DataCollatorForTokenClassification, DataCollatorForMultipleChoice)
SAMPLING_STRATEGIES = {"random": False, "group_by_length": True}  # HF train_sampling_strategy -> group by length
LOOP_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def multitask_base(model):
    """`model` itself, or the model a peft wrapper holds (`get_base_model()`; a `PeftModel` also forwards `specs`)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def check_model(model) -> None:
    """Refuse a model without task heads (a plain `AutoModelForSequenceClassification`, say)."""
    if model is None:
        raise TypeError("MultitaskTrainer needs model=MultitaskModel(...): model_init is not supported (nor, so, "
                        "Trainer.hyperparameter_search, which builds each trial's model with it)")
    if hasattr(multitask_base(model), "specs"):
        return
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or "<encoder>"
    raise TypeError(f"MultitaskTrainer needs a MultitaskModel (one head per task), got {type(model).__name__}: "
                    f"build it with MultitaskModel.from_encoder({source!r}, tasks=[TaskSpec(...), ...]) (or "
                    "hf_multitask.build_model), or train a single-task model with transformers.Trainer")


def prepare_inputs(model, train_dataset, eval_dataset, data_collator, processing_class):
    """What `MultitaskTrainer.__init__` hands to `Trainer.__init__`: (a [`MultitaskDataset`] or `None`,
    `{task_name: Dataset}` or `None`, the collator), after checking the model and validating every dataset."""
    check_model(model)
    specs = multitask_base(model).specs
    train = multitask_dataset(train_dataset, specs) if train_dataset is not None else None
    evaluation = task_datasets(eval_dataset, specs, "eval_dataset") if eval_dataset is not None else None
    collator = build_collator(data_collator, processing_class, specs, train)
    tokenizer = processing_class if processing_class is not None else getattr(collator, "tokenizer", None)
    vocab = vocab_size(model)
    validate_datasets(train.datasets if train is not None else None, specs, "train_dataset", tokenizer,
                      vocab_size=vocab)
    validate_datasets(evaluation, specs, "eval_dataset", tokenizer, vocab_size=vocab)
    return train, evaluation, collator


# ---- datasets ----


def multitask_dataset(train_dataset, specs: Mapping) -> MultitaskDataset:
    """`train_dataset` ({task_name: Dataset}, one Dataset or a [`MultitaskDataset`]) as a `MultitaskDataset` of
    [`task_datasets`]; the caller's own `MultitaskDataset` (a subclass, say) is kept if nothing was renamed in it."""
    train = task_datasets(train_dataset, specs, "train_dataset")
    own = isinstance(train_dataset, MultitaskDataset) and all(train[n] is train_dataset.datasets[n] for n in train)
    return train_dataset if own else MultitaskDataset(train)


def task_datasets(datasets, specs: Mapping, argument: str) -> dict:
    """`{task_name: dataset}` from `{task_name: dataset}` or, for a model with one task, one dataset; `label` or
    `label_ids` columns renamed to `labels`. Unknown task names and ambiguous single datasets are errors."""
    if isinstance(datasets, MultitaskDataset):
        datasets = datasets.datasets
    if not isinstance(datasets, Mapping):
        if len(specs) != 1:
            raise TypeError(f"MultitaskTrainer needs {argument} as {{task_name: Dataset}} (one Dataset only for a "
                            f"model with one task; this one has {list(specs)}), got {type(datasets).__name__}")
        datasets = {next(iter(specs)): datasets}
    if not datasets:
        raise ValueError(f"{argument} is empty: pass {{task_name: dataset}} with at least one task")
    unknown = [name for name in datasets if name not in specs]
    if unknown:
        raise ValueError(f"{argument} has task(s) {unknown} with no head in the model (heads: {sorted(specs)})")
    checked = {}
    for name, dataset in datasets.items():
        where = f"{argument}[{name!r}]"
        check_sized(dataset, where)
        checked[name] = class_label_ids(hf_labels(dataset, where), specs[name], where)
    return checked


def hf_labels(dataset, where: str):
    """`dataset` with HF's `label` / `label_ids` column renamed to `labels` (what the model's forward takes)."""
    columns = getattr(dataset, "column_names", None) or []
    present = [c for c in ("labels", *HF_LABEL_COLUMNS) if c in columns]
    if len(present) > 1:
        raise DataValidationError(f"{where} has label columns {present}; keep one (remove_columns)")
    if present and present[0] != "labels":
        return dataset.rename_column(present[0], "labels")
    return dataset


def validate_tokenized(spec, dataset, where: str, tokenizer=None, labels_required: bool = True,
                       vocab_size: int | None = None) -> None:
    """Check a tokenised dataset against its task spec as strictly as the loader checks files: `input_ids` present,
    no row without tokens, every id in `0..vocab_size - 1` (the encoder's embeddings) when given; labels valid
    for the task's kind ([`TaskKind.check_label_column`]: integral class ids in range, finite scores in
    `score_range`; [`TaskKind.check_labels`]' warnings); a pair task carries two segments (two `[SEP]`s per row for
    cross-encoding, `input_ids_b` for bi-encoding). Errors name `where` (argument and task), the row (the dataset
    index) and the column."""
    if not isinstance(dataset, Dataset):
        return  # torch datasets: read row by row by the collator, not validated here
    columns = dataset.column_names
    needed = ["input_ids"] + ([f"input_ids{PAIR_SUFFIX}"] if spec.is_bi_encoded else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataValidationError(f"{where}: task {spec.name!r} needs tokenised column(s) {missing}, but the dataset "
                                  f"has {columns}; tokenize it with hf_multitask.tokenize_task(dataset, spec, "
                                  "tokenizer)")
    _check_token_ids(spec, dataset, where, vocab_size)
    spec.task_kind.check_tokenized(spec, dataset, where)
    if "labels" in columns:
        column = dataset.with_format("arrow")["labels"]
        _check_no_missing_labels(spec, column, where)
        labels = column.to_numpy(zero_copy_only=False)  # (a missing int label would be NaN here)
        spec.task_kind.check_label_column(spec, labels, where)
        spec.task_kind.check_labels(spec, labels.tolist(), where)  # e.g. the warning for classes that never occur
    elif labels_required:
        raise DataValidationError(f"{where}: no 'labels' column (columns: {columns}); task {spec.name!r} trains and "
                                  f"evaluates on gold labels: keep its label column {spec.label_column!r} as "
                                  "'labels' (or HF's 'label')")
    if spec.is_pair and not spec.is_bi_encoded:
        _check_two_segments(spec, dataset, where, tokenizer)


def _check_no_missing_labels(spec, column, where: str) -> None:
    """Refuse null labels (`None`, pandas' `NA` or `NaN` in a frame given to `Dataset.from_pandas`), naming the
    first row and the count."""
    if not column.null_count:
        return
    missing = np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))
    others = f" ({len(missing)} rows in all)" if len(missing) > 1 else ""
    raise DataValidationError(f"{where}: row {int(missing[0])}, column 'labels': the label is missing (null){others}; "
                              f"task {spec.name!r} needs a gold label in every row: fill it in or drop the row "
                              "(Dataset.filter); data to predict on may leave out the 'labels' column")


def _flat_ids(dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    """`(values, rows)`: every id of a tokenised list column (a row's, or each of a row's choices'), with the
    dataset row it belongs to; lists of any length or of a fixed one (`List(Value("int32"), length=8)`)."""
    flat = dataset.with_format("arrow")[column]
    flat = flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat
    rows = np.arange(len(dataset))
    while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
        rows = rows[pc.list_parent_indices(flat).to_numpy()]
        flat = pc.list_flatten(flat)
    return flat.to_numpy(zero_copy_only=False), rows


def _check_token_ids(spec, dataset, where: str, vocab_size: int | None) -> None:
    for column in [c for c in ("input_ids", f"input_ids{PAIR_SUFFIX}") if c in dataset.column_names]:
        ids, rows = _flat_ids(dataset, column)
        empty = np.flatnonzero(np.bincount(rows, minlength=len(dataset)) == 0)
        if len(empty):
            raise DataValidationError(f"{where}: row {int(empty[0])}, column {column!r}: no tokens ({len(empty)} "
                                      f"rows in all); task {spec.name!r} needs at least [CLS] [SEP] per row")
        bad = (ids < 0) | (ids >= vocab_size) if vocab_size is not None else ids < 0
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"{where}: row {int(rows[first])}, column {column!r}: token id {int(ids[first])} is outside the "
                f"encoder's vocabulary (0..{'' if vocab_size is None else vocab_size - 1}; {int(bad.sum())} ids in "
                f"all): was task {spec.name!r} tokenised with another tokenizer than the model's?")


def _check_two_segments(spec, dataset, where: str, tokenizer) -> None:
    sep = getattr(tokenizer, "sep_token_id", None)
    column = "input_ids" if sep is not None else "token_type_ids"
    if column not in dataset.column_names:
        return
    flat, rows = _flat_ids(dataset, column)
    hits = np.bincount(rows[flat == sep] if sep is not None else rows[flat != 0], minlength=len(dataset))
    bad = hits < (2 if sep is not None else 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{where}: row {row}, column {column!r}: task {spec.name!r} is a sentence pair {spec.text_columns}, but "
            f"the row holds one segment ({int(bad.sum())} rows in all); tokenize both columns together, "
            f"tokenizer(batch[{spec.text_columns[0]!r}], batch[{spec.text_columns[1]!r}]), or use "
            "hf_multitask.tokenize_task")


def validate_datasets(datasets: Mapping | None, specs: Mapping, argument: str, tokenizer,
                      labels_required: bool = True, vocab_size: int | None = None) -> None:
    """[`validate_tokenized`] for every task of `{task_name: dataset}`."""
    for name, dataset in (datasets or {}).items():
        validate_tokenized(specs[name], dataset, f"{argument}[{name!r}]", tokenizer, labels_required, vocab_size)


def vocab_size(model) -> int | None:
    """The number of rows of the model's input embeddings (what a token id must stay below), where it has them."""
    embeddings = multitask_base(model).get_input_embeddings()
    return getattr(embeddings, "num_embeddings", None)


# ---- the collator ----


def build_collator(data_collator, processing_class, specs: Mapping, train: MultitaskDataset | None = None):
    """The collator the trainer uses: ours by default (needs a tokenizer), a `DataCollatorWithPadding` (or
    `DataCollatorForTokenClassification`, `DataCollatorForMultipleChoice`) rebuilt as a [`MultitaskCollator`], a
    user's callable if it returns a batch with `task_name` for two examples of `train`'s first task
    ([`probe_features`], read only for such a callable), and an error saying what to pass otherwise."""
    if data_collator is None:
        if processing_class is None or not hasattr(processing_class, "pad"):
            raise ValueError("MultitaskTrainer needs processing_class=tokenizer to pad each task's batches (the "
                             "Trainer's default_data_collator cannot pad them): pass processing_class="
                             "AutoTokenizer.from_pretrained(...), or data_collator=MultitaskCollator(tokenizer)")
        return MultitaskCollator(processing_class, specs=specs)
    if isinstance(data_collator, MultitaskCollator):
        missing = {name: spec for name, spec in specs.items() if name not in data_collator.specs}
        if missing:  # MultitaskCollator(tokenizer): each task's kind collates its batches (token labels, choices)
            data_collator = copy.copy(data_collator)
            data_collator.specs = {**data_collator.specs, **missing}
        return data_collator
    if isinstance(data_collator, HF_PADDING_COLLATORS):
        name = type(data_collator).__name__
        default = data_collator.padding in (True, "longest") and data_collator.max_length is None
        if not default or data_collator.return_tensors != "pt" or getattr(data_collator, "label_pad_token_id",
                                                                          -100) != -100:
            raise ValueError(f"data_collator={name}(padding={data_collator.padding!r}, max_length="
                             f"{data_collator.max_length!r}, return_tensors={data_collator.return_tensors!r}): "
                             "MultitaskTrainer pads each batch to its longest sequence in torch tensors (token labels "
                             f"with -100); pass {name}(tokenizer) with its defaults, or MultitaskCollator(tokenizer, "
                             "pad_to_multiple_of=...)")
        return MultitaskCollator(data_collator.tokenizer, pad_to_multiple_of=data_collator.pad_to_multiple_of,
                                 specs=specs)
    name = getattr(data_collator, "__name__", type(data_collator).__name__)
    hint = ("a MultitaskTrainer batch holds examples of one task, each with a 'task_name' string, and the batch "
            "must keep 'task_name': pass data_collator=MultitaskCollator(tokenizer) (or leave it out and pass "
            "processing_class=tokenizer)")
    if type(data_collator).__module__.startswith("transformers.") or getattr(data_collator, "__module__", "") \
            .startswith("transformers."):
        raise ValueError(f"data_collator={name} cannot collate multitask batches: {hint}")
    probe = probe_features(train)
    if probe:
        try:
            batch = data_collator(probe)
        except Exception as e:
            raise ValueError(f"data_collator={name} fails on two examples of task {probe[0]['task_name']!r} "
                             f"({type(e).__name__}: {e}): {hint}") from e
        if not isinstance(batch, Mapping) or "task_name" not in batch:
            raise ValueError(f"data_collator={name} returns a batch without 'task_name': {hint}")
    return data_collator


def probe_features(train_dataset: MultitaskDataset | None) -> list[dict] | None:
    """Up to two examples of the first training task, as the collator receives them (read from the task's dataset,
    not through `train_dataset`'s own `__getitems__`, which a subclass may count or log)."""
    if train_dataset is None or not len(train_dataset):
        return None
    first = train_dataset.task_names[0]
    dataset = train_dataset.datasets[first]
    return [{**dataset[i], "task_name": first} for i in range(min(2, len(dataset)))]


# ---- training arguments ----


def check_training_args(args) -> None:
    """Refuse what has no multitask meaning: HF `train_sampling_strategy` other than `random`/`group_by_length`,
    `batch_eval_metrics` (metrics are computed per task over the whole set), and several GPUs in one process."""
    if getattr(args, "n_gpu", 1) > 1:  # the Trainer would wrap the model in torch.nn.DataParallel
        raise ValueError(f"{args.n_gpu} GPUs visible to one process: transformers' Trainer then uses "
                         "torch.nn.DataParallel, whose gathered per-GPU losses MultitaskTrainer's per-task steps do "
                         f"not handle. Launch one process per GPU (`accelerate launch --num_processes {args.n_gpu} "
                         f"script.py` or `torchrun --nproc_per_node {args.n_gpu} script.py`), or make one GPU "
                         "visible (CUDA_VISIBLE_DEVICES=0)")
    strategy = getattr(args, "train_sampling_strategy", "random")
    if strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"train_sampling_strategy={strategy!r} has no multitask equivalent: MultitaskTrainer draws "
                         "each batch's task with task_sampling (round_robin, proportional, annealed, uniform); use "
                         "train_sampling_strategy='random' or 'group_by_length'")


def check_trainer_options(trainer) -> None:
    """Refuse the `Trainer` options that each task's own loss and metrics would otherwise ignore
    (`label_smoothing_factor`, `compute_loss_func`, `preprocess_logits_for_metrics`, `include_for_metrics`,
    `eval_do_concat_batches=False`, accelerate's `split_batches` / `dispatch_batches`), and a
    `metric_for_best_model` that evaluation never reports (it would fail at the first evaluation, after training):
    a task's metric only for the tasks of `eval_dataset`, when it is given."""
    args, ignored = trainer.args, []
    if getattr(args, "label_smoothing_factor", 0.0):
        ignored.append(f"label_smoothing_factor={args.label_smoothing_factor} (each task's kind computes its loss)")
    if trainer.compute_loss_func is not None:
        ignored.append("compute_loss_func (each task's kind computes its loss: TaskSpec(loss=...) or a TaskKind, "
                       "docs/architecture.md, 'Adding a task kind')")
    if trainer.preprocess_logits_for_metrics is not None:
        ignored.append("preprocess_logits_for_metrics (each task's metric is computed from the head's raw outputs; "
                       "evaluation holds one task's outputs at a time)")
    if getattr(args, "include_for_metrics", None):
        ignored.append(f"include_for_metrics={args.include_for_metrics} (compute_metrics gets one task's predictions "
                       "and label ids)")
    if getattr(args, "prediction_loss_only", False):
        ignored.append("prediction_loss_only=True (evaluation computes each task's metric from its outputs)")
    if not getattr(args, "eval_do_concat_batches", True):
        ignored.append("eval_do_concat_batches=False (each task's metric is computed over its whole set at once)")
    for option in ("split_batches", "dispatch_batches"):  # accelerate's; they would re-cut our rank-aware batches
        if getattr(getattr(args, "accelerator_config", None), option, None):
            ignored.append(f"accelerator_config {option}=True (every rank draws its own slice of each task's batch "
                           "from the multitask sampler; per_device_train_batch_size is each rank's share)")
    if ignored:
        raise ValueError(f"MultitaskTrainer does not apply {'; '.join(ignored)}: leave it unset")
    evaluated = trainer.eval_dataset if isinstance(trainer.eval_dataset, Mapping) else trainer.specs  # its tasks
    check_best_metric(args.metric_for_best_model, {name: spec for name, spec in trainer.specs.items()
                                                   if name in evaluated}, trainer.task_compute_metrics)


def check_best_metric(metric: str | None, specs: Mapping, measured: Collection[str] = ()) -> None:
    """`metric_for_best_model` must be a key evaluation reports (`eval_` in front is optional): `loss` (the mean of
    the tasks' losses), `overall`, or `<task>_<name>` with `name` the task's `loss`, a metric its kind reports
    ([`TaskKind.reported_metrics`]) or, for a task in `measured` (it has a `compute_metrics`), any name."""
    if metric is None:
        return
    name = metric.removeprefix("eval_")
    if name in ("loss", "overall"):
        return
    offered = []
    for task, spec in specs.items():
        reported = spec.task_kind.reported_metrics(spec)
        if task in measured or reported is None:
            offered.append(f"'{task}_<your compute_metrics name>'")
            if name.startswith(f"{task}_") and name != f"{task}_":
                return
            continue
        names = [f"{task}_{key}" for key in ("loss", *reported)]
        if name in names:
            return
        offered += [repr(key) for key in names]
    only = next(iter(specs))
    hint = f"; for this one-task model, '{only}_{name}'" if len(specs) == 1 and not name.startswith(only) else ""
    raise ValueError(f"metric_for_best_model={metric!r} is not a metric MultitaskTrainer reports: evaluation gives "
                     f"'loss' (the mean of the tasks' losses), 'overall', {', '.join(offered)} (each with 'eval_' "
                     f"in front or not; a task's compute_metrics adds '<task>_<name>' for each name it returns){hint}")


def groups_by_length(args) -> bool:
    """Whether training batches group examples by length: our `task_sampling_group_by_length`, or HF's
    `train_sampling_strategy="group_by_length"` (the same sampler)."""
    strategy = getattr(args, "train_sampling_strategy", "random")
    return bool(getattr(args, "task_sampling_group_by_length", False) or SAMPLING_STRATEGIES.get(strategy, False))


# ---- compute_metrics ----


def scope_compute_metrics(compute_metrics, specs: Mapping, batch_eval_metrics: bool = False) -> dict[str, Callable]:
    """`{task_name: fn(eval_pred) -> dict}` from the Trainer's `compute_metrics` argument:

    - `{task_name: fn}`: each fn for its task only;
    - a callable with a `task_name` parameter: called for every task, told which (return `{}` to skip one);
    - a plain callable `fn(eval_pred)`: only for a model with one task; with several it is refused, since an
      accuracy would otherwise be computed on a regression task too.
    """
    if compute_metrics is None:
        return {}
    if batch_eval_metrics:
        raise ValueError("batch_eval_metrics=True: MultitaskTrainer computes metrics per task over the whole "
                         "evaluation set; leave batch_eval_metrics False")
    if isinstance(compute_metrics, Mapping):
        unknown = [name for name in compute_metrics if name not in specs]
        if unknown:
            raise ValueError(f"compute_metrics has task(s) {unknown} with no head in the model (heads: "
                             f"{sorted(specs)})")
        uncallable = [name for name, fn in compute_metrics.items() if not callable(fn)]
        if uncallable:
            raise TypeError(f"compute_metrics[{uncallable[0]!r}] is not callable")
        return dict(compute_metrics)
    if not callable(compute_metrics):
        raise TypeError(f"compute_metrics must be a callable or {{task_name: callable}}, got "
                        f"{type(compute_metrics).__name__}")
    if "task_name" in inspect.signature(compute_metrics).parameters:
        return {name: functools.partial(compute_metrics, task_name=name) for name in specs}
    if len(specs) == 1:
        return {next(iter(specs)): compute_metrics}
    raise ValueError(f"compute_metrics is one callable, and the model has tasks {list(specs)}: say which task(s) it "
                     f"measures with compute_metrics={{{next(iter(specs))!r}: fn, ...}}, or give it a task_name "
                     "parameter, fn(eval_pred, task_name), and return {} for the tasks it does not measure")


def user_task_metrics(fn: Callable | None, task_name: str, eval_pred, ours: Mapping, prefix: str) -> dict:
    """A user's metrics for one task under `<prefix>_<task>_<name>`; a name hf-multitask reports for the task
    already (its `TaskSpec.metric`, `loss`, ...) becomes `<prefix>_<task>_user_<name>`, with a warning."""
    if fn is None or eval_pred.label_ids is None:
        return {}
    results = fn(eval_pred)
    if not isinstance(results, Mapping):
        raise TypeError(f"compute_metrics for task {task_name!r} returned {type(results).__name__}, not a dict")
    results = denumpify_detensorize(dict(results))  # numpy and torch scalars as Python numbers, as Trainer's
    out = {}
    for name, value in results.items():
        name = str(name).removeprefix(f"{prefix}_")
        if name in ours or name in LOOP_METRICS:
            logger.warning_once(f"compute_metrics for task {task_name!r} returns {name!r}, which hf-multitask reports "
                                f"itself: yours is {metric_key(prefix, task_name, 'user_' + name)}")
            name = f"user_{name}"
        out[metric_key(prefix, task_name, name)] = value
    return out
