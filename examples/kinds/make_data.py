"""Small data files for examples/kinds/sst_quiz_ner.yaml: SST-5 beside a multiple-choice and a token task.

- `sst-{train,dev}.tsv`: links to the CS224N SST files (nothing copied).
- `quiz-{train,dev}.tsv` (multiple choice, real text): a Quora question and four candidates, of which one is the
  question Quora marked as its duplicate and three are duplicates of other questions; the gold label is the index
  of the duplicate. Built from the Quora rows with `is_duplicate` 1.
- `ner-{train,dev}.tsv` (token classification, synthetic): template sentences with people, organisations and
  places tagged in BIO (`B-PER I-PER`, ...). The dev file's names are drawn from the same lists, its templates too,
  but its sentences are new: it measures tagging, not memorisation of whole sentences.

Run from the repository root:  python examples/kinds/make_data.py --data ../shared/data --output runs/kinds-data
"""

import argparse
import csv
import os
import random
from pathlib import Path

CHOICES = 4
FIRST = ["Maria", "John", "Aisha", "Wei", "Carlos", "Olga", "Ravi", "Emma", "Kenji", "Fatima", "Lucas", "Ingrid"]
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Novak", "Silva", "Tanaka", "Muller", "Haddad", "Kowalski"]
ORGS = [["Acme", "Corp"], ["Globex"], ["Initech"], ["Red", "Cross"], ["United", "Nations"], ["Stanford"],
        ["Bank", "of", "Oslo"], ["Nordic", "Rail"], ["Umbrella", "Labs"], ["Blue", "Harbor", "Press"]]
PLACES = [["Paris"], ["New", "York"], ["Lagos"], ["Tokyo"], ["Rio", "de", "Janeiro"], ["Oslo"], ["Cairo"],
          ["San", "Francisco"], ["Mumbai"], ["Berlin"], ["Lima"], ["Hong", "Kong"]]
TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .", "{PER} met {PER} at the {ORG} office .",
    "yesterday {ORG} opened a new branch in {LOC} .", "{PER} moved from {LOC} to {LOC} last year .",
    "the report by {ORG} was praised by {PER} .", "according to {PER} , {ORG} will hire in {LOC} .",
    "{LOC} welcomed {PER} on Monday .", "{PER} said the deal with {ORG} is off .",
    "shares of {ORG} fell after {PER} resigned .", "a flight from {LOC} to {LOC} was delayed .",
]


def link_sst(data: Path, output: Path) -> None:
    for split in ("train", "dev"):
        target = output / f"sst-{split}.tsv"
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(os.path.relpath(data / f"sst-{split}.tsv", output), target)


def quiz_rows(path: Path, count: int, rng: random.Random) -> list[list]:
    with open(path, encoding="utf-8", newline="") as f:
        pairs = [(r["sentence1"], r["sentence2"]) for r in csv.DictReader(f, delimiter="\t")
                 if float(r["is_duplicate"]) == 1.0 and r["sentence1"].strip() and r["sentence2"].strip()]
    rng.shuffle(pairs)
    rows = []
    for i, (question, duplicate) in enumerate(pairs[:count]):
        others = rng.sample([p[1] for j, p in enumerate(pairs) if j != i and p[1] != duplicate][:2000], CHOICES - 1)
        gold = rng.randrange(CHOICES)
        choices = others[:gold] + [duplicate] + others[gold:]
        rows.append([f"quiz{i:05d}", question, *choices, gold])
    return rows


def ner_rows(count: int, rng: random.Random) -> list[list]:
    rows = []
    for i in range(count):
        words, tags = [], []
        for piece in rng.choice(TEMPLATES).split():
            if piece in ("{PER}", "{ORG}", "{LOC}"):
                kind = piece[1:-1]
                span = {"PER": lambda: [rng.choice(FIRST), rng.choice(LAST)][: rng.choice((1, 2, 2))],
                        "ORG": lambda: rng.choice(ORGS), "LOC": lambda: rng.choice(PLACES)}[kind]()
                words += span
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(span) - 1)
            else:
                words.append(piece)
                tags.append("O")
        rows.append([f"ner{i:05d}", " ".join(words), " ".join(tags)])
    return rows


def write(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="The CS224N data directory.")
    parser.add_argument("--output", default="runs/kinds-data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data, output = Path(args.data), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    link_sst(data, output)
    rng = random.Random(args.seed)
    header = ["id", "question", *(f"choice_{k}" for k in range(CHOICES)), "answer"]
    write(output / "quiz-train.tsv", header, quiz_rows(data / "quora-train.tsv", 2000, rng))
    write(output / "quiz-dev.tsv", header, quiz_rows(data / "quora-dev.tsv", 400, rng))
    write(output / "ner-train.tsv", ["id", "tokens", "tags"], ner_rows(1500, rng))
    write(output / "ner-dev.tsv", ["id", "tokens", "tags"], ner_rows(300, rng))
    print(f"wrote {output}: sst (links), quiz (multiple choice), ner (token classification)")


if __name__ == "__main__":
    main()
