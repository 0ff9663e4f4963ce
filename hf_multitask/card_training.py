"""The model card's training sections: the arguments that shaped a run ("Training") and the techniques it used
("Techniques"), as [`render_model_card`] writes them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .aggregators import get_aggregator
from .loss_weighting import get_loss_weighting


def _pal_text(pal: Mapping[str, Any]) -> str:
    text = f"rank {pal['rank']}, g = {pal['g']}"
    if pal["g"] == "attention":
        text += f" ({pal['num_heads']} heads)"
    text += f", placement `{pal['placement']}`, " + ("V_E/V_D shared across layers" if pal["shared_across_layers"]
                                                      else "V_E/V_D per layer")
    layers = pal.get("layers_to_transform")
    return text + f", layers {layers if layers else 'all'}, tasks {', '.join(pal.get('tasks') or [])}"


def training_section(args, trained_steps) -> str:
    """The card's "Training" table: the arguments that shaped the run (`None`: no section)."""
    if args is None:
        return ""
    rows = _training_rows(args)
    if trained_steps:
        rows.append(("optimizer steps done", trained_steps))
    lines = ["## Training\n", "| argument | value |", "|---|---|"]
    lines += [f"| `{key}` | {value} |" if " " not in key else f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


def _training_rows(args) -> list[tuple[str, Any]]:
    names = ["task_sampling", "task_sampling_grouped", "gradient_surgery"]
    if getattr(args, "gradient_surgery", None) == "gradvac":
        names += ["gradvac_beta", "gradvac_per_layer"]
    if getattr(args, "smart_tasks", None):
        names += ["smart_tasks", "smart_lambda", "smart_mu", "smart_steps", "smart_step_size", "smart_noise_std",
                  "smart_epsilon", "smart_radius", "smart_momentum"]
    weighting = getattr(args, "loss_weighting", "none")
    if weighting != "none":
        names += ["loss_weighting", *get_loss_weighting(weighting).option_fields.values(), "loss_weighting_kwargs"]
    names += [n for n in ("gradient_surgery_kwargs", "regularizers") if getattr(args, n, None)]
    names += ["learning_rate", "head_learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim",
              "per_device_train_batch_size", "gradient_accumulation_steps"]
    names += ["max_steps"] if getattr(args, "max_steps", -1) > 0 else ["num_train_epochs"]
    names += ["seed"]
    rows = [(n, getattr(args, n)) for n in names if hasattr(args, n) and getattr(args, n) is not None]
    if hasattr(args, "world_size"):
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        rows.append((f"global batch ({args.world_size} process(es))", batch))
    return [(n, _format_value(v)) for n, v in rows]


def _format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(getattr(value, "value", value))  # enums (optim, lr_scheduler_type) by value


def techniques_section(config, specs, args) -> str:
    """The card's "Techniques" list: pooling, pair encodings, PALs, losses and the training methods used."""
    items = [f"Sentence representation: `{config.pooling}` pooling"
             + (" over non-padding tokens." if config.pooling == "mean" else " (the first token's final state).")]
    pairs = {enc: [t for t, s in specs.items() if s.is_pair and s.pair_encoding == enc] for enc in ("cross", "bi")}
    if pairs["cross"]:
        items.append(f"Cross-encoded pairs (`[CLS] a [SEP] b [SEP]`, one encoder pass): {', '.join(pairs['cross'])}.")
    if pairs["bi"]:
        items.append(f"Bi-encoded pairs (a and b encoded apart; [u; v; |u − v|] for classification, cosine for "
                     f"regression): {', '.join(pairs['bi'])}.")
    if config.pal is not None:
        items.append(f"Projected Attention Layers (Stickland & Murray 2019, arXiv:1902.02671): "
                     f"{_pal_text(config.pal)}.")
    ordinal = [t for t, s in specs.items() if "ordinal" in s.loss]
    if ordinal:
        items.append(f"Ordinal log loss on ordered classes: {', '.join(ordinal)}.")
    items += _training_techniques(args)
    return "## Techniques\n\n" + "\n".join(f"- {item}" for item in items) + "\n"


def _training_techniques(args) -> list[str]:
    if args is None:
        return []
    items = [f"Task sampling: `{getattr(args, 'task_sampling', 'annealed')}`."]
    surgery = getattr(args, "gradient_surgery", "none")
    if surgery == "gradvac":
        items.append(f"GradVac (Wang et al. 2021) on the shared parameters, β = {args.gradvac_beta:g}, "
                     f"{'one target per layer' if args.gradvac_per_layer else 'one target'}.")
    elif surgery != "none":
        title = get_aggregator(surgery).title or f"`{surgery}`"
        items.append(f"{title} on the shared parameters, one batch of every task per step.")
    elif getattr(args, "loss_weighting", "none") != "none":
        items.append(f"Loss weighting `{args.loss_weighting}`: one batch of every task per step, each task's loss "
                     "weighted by the method (the weights are logged as `task_weight_<task>`).")
    elif getattr(args, "task_sampling_grouped", False):
        items.append("Grouped batches: one batch of every task per step, losses summed.")
    if getattr(args, "smart_tasks", None):
        items.append(f"SMART (Jiang et al. 2020) on {', '.join(args.smart_tasks)}: λ_s = {args.smart_lambda:g}, "
                     f"μ = {args.smart_mu:g}, {args.smart_steps} ascent step(s).")
    for name, options in (getattr(args, "regularizers", None) or {}).items():
        settings = ", ".join(f"{key} = {value}" for key, value in options.items() if key != "tasks")
        tasks = ", ".join(options.get("tasks", []))
        items.append(f"Regulariser `{name}` on {tasks}{': ' + settings if settings else ''}.")
    if getattr(args, "head_learning_rate", None) is not None:
        items.append(f"Separate learning rate for the heads: {args.head_learning_rate:g}.")
    return items
