"""Reading CS224N-style TSV and CSV files strictly: every malformed row is an error naming the file and the row."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from transformers.utils import logging

from .kinds import DataValidationError

logger = logging.get_logger(__name__)


def read_delimited(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CS224N-style TSV (or a CSV): header line, standard CSV quoting. Returns (columns, rows).

    Rows are numbered from 1 after the header; blank lines are not rows (they are skipped and counted in a
    warning). A row with more or fewer fields than the header, a repeated header name, a field that holds a line
    break (or, in a TSV, a tab: an unbalanced `"` swallows the following lines that way) and a quote that does
    not follow CSV's rules (`"a" b`: text after a closing quote; a quote never closed) are errors naming the row
    or line: the reader is strict, so no row is merged into another and no text is rewritten.

    Example:

    ```python
    >>> columns, rows = read_delimited("../shared/data/sst-dev.tsv")  # doctest: +SKIP
    >>> columns
    ['id', 'sentence', 'sentiment']
    ```
    """
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(read_utf8(path).removeprefix("\ufeff"), newline=""), delimiter=delimiter,
                        strict=True)
    records, line = [], 0  # (a leading byte-order mark is removed above: it would join the first column's name)
    try:
        for record in reader:
            records.append(record)
            line = reader.line_num
    except csv.Error as err:
        row = f"row {sum(1 for r in records[1:] if r) + 1}" if records else "the header"
        message = str(err).replace("\t", "<tab>")
        raise DataValidationError(
            f"{path}: {row} (from line {line + 1}): {message} (a field that starts with '\"' is quoted and must end "
            "with '\"' just before the next delimiter or the file's end; a quote inside is written '\"\"')") from None
    if not records or not records[0]:
        raise DataValidationError(f"{path}: no header line (the file is empty or its first line is blank)")
    columns, rows, blank = records[0], [], 0
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataValidationError(f"{path}: the header repeats column(s) {repeated}")
    for record in records[1:]:
        if not record:
            blank += 1
            continue
        rows.append(_row_dict(path, len(rows) + 1, columns, record, delimiter))
    if blank:
        logger.warning(f"{path}: skipped {blank} blank line(s); they are not rows, and row numbers do not count them")
    return columns, rows


def read_utf8(path: str | os.PathLike) -> str:
    """The file's text; invalid UTF-8 is an error naming the file, the byte offset and the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataValidationError(f"{path}: not valid UTF-8 at byte {err.start}, line {line} ({err.reason})") from None


def _row_dict(path: Path, row: int, columns: list[str], record: list[str], delimiter: str) -> dict[str, str]:
    for column, cell in zip(columns, record):  # checked first: a swallowed tail also leaves the row short of fields
        if "\n" in cell or "\r" in cell or (delimiter == "\t" and "\t" in cell):
            held = "a tab" if "\t" in cell else "a line break"
            raise DataValidationError(f"{path}: row {row}, column {column!r}: the field holds {held}, as when an "
                                      "unbalanced '\"' swallows the following lines (text with line breaks: use "
                                      "JSON lines)")
    if len(record) != len(columns):
        more_or_fewer = "more" if len(record) > len(columns) else "fewer"
        raise DataValidationError(f"{path}: row {row} has {more_or_fewer} fields ({len(record)}) than the header's "
                                  f"{len(columns)} columns")
    return dict(zip(columns, record))
