"""The recipe at the single-task reference's budget, chosen from the ablation's means by a rule fixed before the
means were in (issue 16, part 3; docs/results.md, "The recipe at the reference's budget").

The rule. Each ablation row changes one choice the main settings make (every config under
`examples/cs224n/ablation/` differs from `cross_annealed.yaml` only in what its row tests), and the choices fall on
independent axes (`AXES`): task sampling, pair encoding, adapters, the STS head's initial bias, the step (one task
per batch, or grouped with an aggregator or a loss weighting), SMART, R-Drop, SST's loss, and where the heads start.
On each axis the option with the highest mean overall dev score over its seeds wins, the main settings' option
counting as one (its mean is `cross_annealed`'s); an option whose verdict is "hurts" (its interval against its
comparator lies below 0) is never taken, and the main settings' option wins a tie. The recipe is
`cross_annealed.yaml` with every winning row's changes, at the reference's 3,963 batches of 32 (1,321 grouped steps
of one batch per task when a grouped option wins). The winners join by their gain over the main settings, largest
first; one that cannot join those before it (two options that change the same setting, or a config `hf-multitask
train` refuses) keeps the main settings' option on its axis, and the script says so.

What the rule does not do: the options are chosen one at a time, so their combination is first measured when
`recipe_3963` runs (seeds 142-144, new, against `single_task_3ep`); and the choice reads the same dev sets the
recipe is then scored on, so the recipe's score is an optimistic estimate of a test score (the test sets are not
here), as the ablation's own best row would be.

    python benchmarks/choose_recipe.py           # each axis's options with their means, and the choice
    python benchmarks/choose_recipe.py --write   # also write examples/cs224n/reference/recipe.yaml
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402  (benchmarks/ is not a package)
import ablation_stats  # noqa: E402
import reference_runs  # noqa: E402

from hf_multitask.build import build_task_specs  # noqa: E402
from hf_multitask.cli import parse_train_args  # noqa: E402

MAIN = "cross_annealed"
# (axis, the main settings' option, the rows that change it): every row of the study but the frozen baseline, the
# A/A row, `best` (a combination of two axes' options) and the plain-HF single-task reference.
AXES = (
    ("task sampling", "annealed", ("round_robin", "proportional")),
    ("pair encoding", "cross-encoded", ("bi_annealed",)),
    ("adapters", "none", ("pal",)),
    ("STS head's initial bias", "0", ("sts_bias_center",)),
    ("step", "one task per batch", ("grouped_none", "pcgrad", "gradvac", "mgda", "upgrad", "dualproj", "imtl_g",
                                    "aligned_mtl", "uncertainty")),
    ("SMART", "off", ("smart",)),
    ("R-Drop", "off", ("rdrop",)),
    ("SST loss", "cross-entropy", ("ordinal",)),
    ("heads start from", "random", ("transfer",)),
)
RUN_KEYS = ("output_dir", "max_steps", "seed")  # what every row sets for itself, not a change it tests


@dataclass
class Option:
    """One option of an axis: the row measuring it (`MAIN` for the main settings' option), its mean overall, the
    seeds done of the seeds it runs with, and its verdict against its comparator."""

    label: str
    row: str
    mean: float
    done: int
    seeds: int
    verdict: str

    @property
    def complete(self) -> bool:
        return self.done == self.seeds


def read_config(row: str) -> dict:
    return yaml.safe_load((ablation.REPO / ablation.CONFIG_DIR / f"{row}.yaml").read_text(encoding="utf-8"))


def changes(row: str) -> dict:
    """What `row`'s config sets differently from the main settings' (`cross_annealed.yaml`), without the keys every
    run sets for itself."""
    main, config = read_config(MAIN), read_config(row)
    return {key: value for key, value in config.items() if key not in RUN_KEYS and main.get(key) != value}


def merge(into: dict, change: dict, overwrite: bool = False) -> dict:
    """`into` with `change` applied, nested dicts (`task_overrides`, `regularizers`) merged key by key; unless
    `overwrite`, setting a leaf `into` already sets differently is an error (two options change one setting)."""
    out = copy.deepcopy(into)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, overwrite)
        elif key in out and out[key] != value and not overwrite:
            raise ValueError(f"{key!r} is already {out[key]!r}, this option sets {value!r}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def problem(config: dict) -> str | None:
    """Why `config` is not a valid training config (what `hf-multitask train` would refuse), or None."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
        handle.flush()
        try:
            model_args, _, _ = parse_train_args([handle.name])
            build_task_specs(model_args)
        except (ValueError, SystemExit) as error:
            return str(error)
    return None


def options(root: Path, n_resamples: int) -> dict[str, list[Option]]:
    """Per axis, the main settings' option then each row's, with its mean, seeds done and verdict."""
    rows = ablation.rows_by_name()
    results = {}

    def option(label: str, name: str) -> Option:
        if name not in results:
            results[name] = ablation_stats.summarize(rows[name], root, n_resamples)
        result = results[name]
        low_high = result.difference.get("overall")
        verdict = "—" if low_high is None else ablation_stats.verdict(*low_high[1:])
        return Option(label, name, result.mean.get("overall", float("nan")), len(result.runs), len(rows[name].seeds),
                      verdict)

    return {axis: [option(default, MAIN), *(option(rows[name].changes, name) for name in names)]
            for axis, default, names in AXES}


def choose(axis_options: list[Option]) -> Option:
    """The highest mean among the options that do not hurt; the main settings' option (first) wins ties."""
    allowed = [option for option in axis_options if option.verdict != "hurts"]
    return max(allowed, key=lambda option: option.mean)  # max keeps the first of equal keys


def recipe(winners: list[Option], main_mean: float) -> tuple[dict, list[str]]:
    """`cross_annealed.yaml` with the winners' changes at the reference's budget, as the reference group runs it,
    and the winners left out. The winners are applied by their gain over the main settings, largest first; one that
    cannot join those before it (it changes a setting they change, or the config no longer validates: bi-encoded
    pairs and a centred STS bias, say) is left out, its axis keeping the main settings' option."""
    main, chosen, left_out = read_config(MAIN), {}, []
    for option in sorted(winners, key=lambda option: main_mean - option.mean):
        if option.row == MAIN:
            continue
        try:
            trial = merge(chosen, changes(option.row))
            why = problem(merge(main, trial, overwrite=True))
        except ValueError as error:
            why = str(error)
        if why:
            left_out.append(f"{option.row}: {why}")
        else:
            chosen = trial
    config = merge(main, chosen, overwrite=True)
    batches_per_step = len(config["tasks"]) if config.get("task_sampling_grouped") else 1
    if reference_runs.REFERENCE_BATCHES % batches_per_step:
        raise SystemExit(f"{reference_runs.REFERENCE_BATCHES} batches are not a whole number of grouped steps")
    config.update(output_dir="runs/ablation/ref_recipe_3963", seed=reference_runs.SEEDS[0],
                  max_steps=reference_runs.REFERENCE_BATCHES // batches_per_step)
    return config, left_out


def header(choice: dict[str, Option], left_out: list[str]) -> str:
    lines = [
        "# The recipe at the single-task reference's budget: row `recipe_3963` of the queue's `reference` group",
        "# (docs/results.md, \"The recipe at the reference's budget\"; benchmarks/reference_runs.py).",
        "# Written by `python benchmarks/choose_recipe.py --write` from the ablation's archive: on each axis the",
        "# option with the highest mean overall (3 seeds) that does not hurt; the main settings win ties.",
    ]
    lines += [f"#   {axis}: {option.label} ({option.row}, mean {option.mean:.4f})" for axis, option in choice.items()]
    lines += [f"#   left out: {why}" for why in left_out]
    lines += ["# Budget: 3,963 batches of 32 = 126,816 training examples, what three single-task fine-tunes of 3",
              "# epochs each take on this data (801 SST + 2,595 Quora + 567 STS batches).",
              "# Run: python benchmarks/ablation.py run --group reference recipe_3963"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true",
                        help=f"Write the recipe to {reference_runs.RECIPE} (only when every option's runs are done).")
    parser.add_argument("--resamples", type=int, default=ablation_stats.RESAMPLES)
    args = parser.parse_args(argv)
    by_axis = options(ablation.REPO, args.resamples)
    choice = {}
    for axis, axis_options in by_axis.items():
        choice[axis] = choose([option for option in axis_options if option.done])
        print(f"{axis}:")
        for option in axis_options:
            mark = "*" if option is choice[axis] else " "
            print(f"  {mark} {option.label:<60} {option.row:<16} {option.mean:.4f}  {option.done}/{option.seeds} "
                  f"seeds  {option.verdict}")
    missing = [f"{option.row} ({option.done}/{option.seeds})" for axis_options in by_axis.values()
               for option in axis_options if not option.complete]
    config, left_out = recipe(list(choice.values()), by_axis[AXES[0][0]][0].mean)
    for why in left_out:
        print(f"left out (its axis keeps the main settings): {why}")
    print("\nrecipe:\n" + yaml.safe_dump(config, sort_keys=False))
    if missing:
        print(f"provisional: not every option's seeds are done: {', '.join(dict.fromkeys(missing))}")
    if args.write:
        if missing:
            raise SystemExit("--write needs every option's seeds done; the choice above is provisional")
        path = ablation.REPO / reference_runs.RECIPE
        path.write_text(header(choice, left_out) + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
