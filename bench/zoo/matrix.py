"""The compatibility matrix: results.jsonl (one checked cell a line, appended as the sweep goes,
so a stopped sweep resumes) and the tables made from it: Markdown, CSV, JSON, and the README's
support-table section."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
from collections import defaultdict
from collections.abc import Iterable

from varrt.bench.zoo.harness import FORMS, Record

RESULTS = "results.jsonl"


def read(out: pathlib.Path) -> list[Record]:
    """Every record in ``out``/results.jsonl; a later line for the same cell replaces an earlier one."""
    path = out / RESULTS
    cells: dict[tuple[str, str, str, str], Record] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    r = Record(**json.loads(line))
                except (ValueError, TypeError):  # a line cut short by a killed sweep
                    continue
                cells[(r.exporter, r.model, r.form, r.method)] = r
    return list(cells.values())


def append(out: pathlib.Path, record: Record) -> None:
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps(record.to_json()) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _cell(r: Record) -> str:
    if r.status == "ok":
        return f"ok {r.error:.1e}"
    return f"**{r.status}**: {r.reason}".replace("|", "\\|")


def _rows(records: Iterable[Record], method: str) -> dict[tuple[str, str, str], dict[str, Record]]:
    rows: dict[tuple[str, str, str], dict[str, Record]] = defaultdict(dict)
    for r in records:
        if r.method == method:
            rows[(r.exporter, r.family, r.model)][r.form] = r
    return dict(sorted(rows.items()))


def summary(records: list[Record], method: str = "gradient") -> str:
    """Counts per exporter and form: correct / checked."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.method == method:
            for key in ((r.exporter, r.form), ("all", r.form)):
                counts[key][0] += r.status == "ok"
                counts[key][1] += 1
    exporters = sorted({e for e, _ in counts if e != "all"}) + ["all"]
    lines = ["| exporter | " + " | ".join(FORMS) + " |", "|---|" + "---|" * len(FORMS)]
    for exporter in exporters:
        cells = [f"{counts[(exporter, f)][0]}/{counts[(exporter, f)][1]}" if (exporter, f) in counts else "-"
                 for f in FORMS]  # fmt: skip
        lines.append(f"| {exporter} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures(records: list[Record], method: str = "gradient") -> str:
    """Every failing cell, grouped by status and reason."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in records:
        if r.method == method and r.status != "ok":
            reason = {"wrong": "max relative error >= 1e-2",
                      "imprecise": "max relative error >= 1e-2, as the framework's own float32 gradient's"
                      }.get(r.status, r.reason)  # fmt: skip
            groups[(r.status, reason)].append(f"{r.model} ({r.exporter.split('-', 1)[1]}, {r.form})")
    lines = []
    for (status, reason), cells in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines.append(f"- **{status}** ({len(cells)}): {reason} — " + ", ".join(sorted(cells)))
    return "\n".join(lines) or "- none"


def markdown(records: list[Record], method: str = "gradient") -> str:
    """The matrix: one row per (exporter, model), one column per form."""
    lines = ["| exporter | family | model | image | " + " | ".join(FORMS) + " | framework's own f32 error |",
             "|---|---|---|---|" + "---|" * (len(FORMS) + 1)]  # fmt: skip
    for (exporter, family, model), forms in _rows(records, method).items():
        cells = [_cell(forms[f]) if f in forms else "-" for f in FORMS]
        f32 = next((r.framework_f32_error for r in forms.values() if r.framework_f32_error is not None), None)
        image = next((r.image for r in forms.values() if r.image), "-")
        lines.append(f"| {exporter} | {family} | {model} | {image} | " + " | ".join(cells) + f" | {_number(f32)} |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def report(records: list[Record], method: str = "gradient") -> str:
    """Summary, matrix and grouped failures, as one Markdown document."""
    return "\n\n".join([
        f"## Zoo sweep: method {method!r}, correct / checked per exporter and form", summary(records, method),
        "## Failures, grouped by reason", failures(records, method),
        "## Matrix (max relative error per image and class vs the framework's float64 autodiff)",
        markdown(records, method),
    ]) + "\n"  # fmt: skip


def readme_section(records: list[Record], method: str = "gradient") -> str:
    """The README's support table: what the lead pastes under "Supported architectures"."""
    checked = {(r.exporter, r.model) for r in records if r.method == method}
    return "\n\n".join([
        "### Supported architectures (the zoo sweep)",
        f"`python -m varrt.bench.zoo` builds {len(checked)} public architectures with random weights, exports "
        "each in three forms (static; dynamic batch; dynamic height and width, explained with `--input-shape`) "
        f"and compares varrt's `{method}` attributions with the framework's own float64 autodiff "
        "(correct: relative error < 1e-2 per image and class). Correct / checked:",
        summary(records, method),
        "Not yet supported, with the reason:",
        failures(records, method),
        "<details><summary>Every model and form</summary>\n\n" + markdown(records, method) + "\n\n</details>",
    ]) + "\n"  # fmt: skip


def write_tables(out: pathlib.Path, records: list[Record]) -> None:
    """matrix.md (every method), matrix.csv, matrix.json beside results.jsonl."""
    methods = sorted({r.method for r in records}, key=lambda m: m != "gradient")
    (out / "matrix.md").write_text("\n".join(report(records, m) for m in methods))
    (out / "matrix.json").write_text(json.dumps([r.to_json() for r in records], indent=1) + "\n")
    buf = io.StringIO()
    fields = list(Record.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in sorted(records, key=lambda r: (r.exporter, r.model, FORMS.index(r.form), r.method)):
        writer.writerow(r.to_json())
    (out / "matrix.csv").write_text(buf.getvalue())
