"""``OUT/index.html``: a static page over a run's ``results.parquet``, for looking at an audit.

One self-contained file (inline CSS and a little inline JavaScript, no network): the run's summary
at the top, then one table row per image with a thumbnail (the overlay PNG of ``--save all``: the
photo and per class the base and VAR maps; else the photo itself), the predicted class, the
explained classes with their probabilities and the audit figures. Columns sort on a click on
their header, a box filters the rows by class name. Thumbnails are small JPEGs in ``OUT/thumbs/``
loaded lazily, so a page over thousands of images stays light; each links to the full PNG.

Everything that comes from the user (file names, class names, the model's path) is HTML-escaped,
and links are also percent-encoded, so a file named ``<script>.png`` shows as text.

>>> write_report(Path("out"))                                     # doctest: +SKIP
PosixPath('out/index.html')
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, UnidentifiedImageError
from varrt.files import atomic_path
from varrt.results import RESULTS_NAME, read_results

REPORT_NAME = "index.html"
THUMBS = "thumbs"
_THUMB_WIDTH = 360


def write_report(out: Path) -> Path:
    """Build ``out/index.html`` (and its thumbnails) from ``out/results.parquet``; returns its path."""
    results = read_results(out / RESULTS_NAME)
    rows = results.table.to_pylist()
    body = "\n".join(_row(out, row) for row in rows)
    page = _PAGE.format(
        title=_e(f"varrt: {results.run.get('method', '')} on {len(rows)} images"),
        summary=_summary(results.run, len(rows), sum(1 for row in rows if row.get("error"))),
        rows=body,
        script=_SCRIPT,
    )
    path = out / REPORT_NAME
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(relative: str) -> str:
    """A relative link to a file in OUT: percent-encoded, then escaped for the attribute."""
    return _e(quote(relative))


def _summary(run: Mapping[str, Any], count: int, errors: int) -> str:
    fields = [
        ("model", run.get("model")), ("method", run.get("method")), ("classes", run.get("classes")),
        ("VAR", f"T={run.get('temperature')}, tau={run.get('tau')}, scale={run.get('var_scale')}"
         if run.get("var") else "off"),
        ("backend", run.get("backend")), ("images", count), ("errors", errors), ("saved", run.get("save")),
        ("layout", run.get("layout")), ("varrt", run.get("varrt_version")),
    ]
    return "\n".join(f"<div><b>{_e(name)}</b> {_e(value)}</div>" for name, value in fields if value is not None)


def _thumbnail(out: Path, row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(thumbnail link, full-size link) for a row: from its overlay PNG, else from the photo."""
    stem = row["stem"]
    overlay = out / f"{stem}.png"
    source = overlay if overlay.is_file() else Path(row["path"])
    thumb = out / THUMBS / f"{stem}.jpg"
    try:
        with Image.open(source) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None  # the photo moved or was never readable: the row stays, without a picture
    height = max(1, round(image.height * _THUMB_WIDTH / image.width))
    small = image.resize((_THUMB_WIDTH, height)) if image.width > _THUMB_WIDTH else image
    with atomic_path(thumb) as temporary:  # a full disk is an error, not a missing picture
        small.save(temporary, format="JPEG", quality=80)
    full = overlay.name if overlay.is_file() else None
    return f"{THUMBS}/{thumb.name}", full or f"{THUMBS}/{thumb.name}"


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _classes(names: Sequence[str], probabilities: Sequence[float], shares: Sequence[float] | None) -> str:
    items = []
    for index, (name, probability) in enumerate(zip(names, probabilities)):
        share = f", top 5% mass {_number(shares[index], 2)}" if shares else ""
        items.append(f"<li>{_e(name)} <span class=p>{probability:.3f}{share}</span></li>")
    return "<ol>" + "".join(items) + "</ol>"


def _row(out: Path, row: Mapping[str, Any]) -> str:
    if row.get("error"):
        return _error_row(row)
    links = _thumbnail(out, row)
    picture = (f'<a href="{_href(links[1])}"><img loading="lazy" src="{_href(links[0])}" alt="{_e(row["stem"])}">'
               "</a>" if links else "")
    names = row["class_names"]
    search = " ".join([row["predicted_name"], *names]).lower()
    first_share = (row["top_mass_share"] or [None])[0]
    cells = [
        ("", picture),
        (row["path"], _e(Path(row["path"]).name)),
        (row["predicted_name"], _e(row["predicted_name"])),
        (row["predicted_probability"], _number(row["predicted_probability"])),
        ("", _classes(names, row["probabilities"], row["top_mass_share"])),
        (-1 if first_share is None or math.isnan(first_share) else first_share, _number(first_share)),
        (row["class_entropy"], _number(row["class_entropy"])),
    ]
    tds = "".join(f'<td data-v="{_e(value)}">{text}</td>' for value, text in cells)
    return f'<tr class=row data-classes="{_e(search)}">{tds}</tr>'


def _error_row(row: Mapping[str, Any]) -> str:
    """An image that was not explained: its name and why, sorted last by confidence."""
    cells = [("", ""), (row["path"], _e(Path(row["path"]).name)), ("", "<b>error</b>"), (-1, ""),
             ("", f"<span class=error>{_e(row['error'])}</span>"), (-1, ""), (-1, "")]
    tds = "".join(f'<td data-v="{_e(value)}">{text}</td>' for value, text in cells)
    return f'<tr class="row failed" data-classes="error">{tds}</tr>'


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<meta name=viewport content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1em; }}
#summary {{ display: flex; flex-wrap: wrap; gap: 0.4em 1.5em; margin-bottom: 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
th[data-sort] {{ cursor: pointer; user-select: none; }}
th[data-sort]:after {{ content: " \\2195"; color: #999; }}
img {{ width: 360px; height: auto; }}
ol {{ margin: 0; padding-left: 1.2em; }}
.p {{ color: #555; }}
.error {{ color: #b00; }}
</style></head>
<body>
<h1>{title}</h1>
<div id=summary>
{summary}
</div>
<p><input id=filter type=search placeholder="filter by class name" size=30> <span id=shown></span></p>
<table id=results>
<thead><tr><th>maps (photo, then per class base | VAR)</th><th data-sort=text>image</th>
<th data-sort=text>predicted</th><th data-sort=number>confidence</th><th>explained classes (probability)</th>
<th data-sort=number>top 5% VAR mass (1st class)</th><th data-sort=number>entropy of M</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script>
{script}
</script>
</body></html>
"""

_SCRIPT = """
const body = document.querySelector("#results tbody");
const rows = Array.from(body.rows);
const filter = document.getElementById("filter");
const shown = document.getElementById("shown");
function update() {
  const query = filter.value.trim().toLowerCase();
  let count = 0;
  for (const row of rows) {
    const match = !query || row.dataset.classes.includes(query);
    row.hidden = !match;
    count += match;
  }
  shown.textContent = count + " of " + rows.length + " images";
}
filter.addEventListener("input", update);
document.querySelectorAll("th[data-sort]").forEach((th) => {
  th.addEventListener("click", () => {
    const column = th.cellIndex;
    const numeric = th.dataset.sort === "number";
    const order = th.dataset.order === "asc" ? -1 : 1;
    th.dataset.order = order === 1 ? "asc" : "desc";
    const key = (row) => row.cells[column].dataset.v;
    rows.sort((a, b) => order * (numeric ? parseFloat(key(a)) - parseFloat(key(b))
                                         : key(a).localeCompare(key(b))));
    rows.forEach((row) => body.appendChild(row));
  });
});
update();
"""
