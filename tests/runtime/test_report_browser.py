"""OUT/index.html in a real browser: Debian's headless chromium renders a `varrt explain` run (the
real Explainer on the linear classifier of tests/testbed.py, three solid-colour photos, one of them
named `<script>.png`, and an undecodable file). The screenshot must show each photo's colour as a
thumbnail-sized block in the picture column and text in the table's columns; the DOM after the
page's scripts ran (--dump-dom) must show the row count they write, and a probe script driving the
filter box and a column header must see the rows the page's own data says it should. Skipped, with
the reason, where chromium is not installed (`.ci/run` installs it with apt-get)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import testbed
from PIL import Image
from varrt import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

SHAPE = (3, 8, 8)
W, B = testbed.linear_weights(SHAPE, 7)
PHOTOS = {"red.png": (220, 30, 30), "<script>.png": (30, 170, 40), "blue.png": (30, 60, 220)}
WINDOW = (1400, 1200)


def chromium(*arguments: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Headless chromium with no network, no first-run or background services, a throwaway profile."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               "--virtual-time-budget=5000", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    model = folder / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE, preset="none"), model)
    photos = []
    for name, colour in PHOTOS.items():
        Image.new("RGB", (64, 48), colour).save(folder / name)
        photos.append(folder / name)
    (folder / "broken.jpg").write_bytes(b"no picture here")
    out = folder / "out"
    # --save summary: the thumbnails are the photos themselves, so their colours can be found.
    argv = ["explain", str(model), *map(str, photos), str(folder / "broken.jpg"), "-o", str(out), "-q",
            "-m", "gradient", "--classes", "top2", "--save", "summary"]
    assert cli.main(argv) == 0
    return out, folder


def test_the_screenshot_shows_the_photos_and_the_table(run, tmp_path):
    out, _ = run
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", (out / "index.html").as_uri(), profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    picture_column, table_columns = pixels[:, :420], pixels[:, 420:]
    for name, colour in PHOTOS.items():
        # A thumbnail is drawn 360 px wide (48/64 of that high): ~97,000 pixels of the photo's colour.
        close = (np.abs(picture_column - np.array(colour)).max(axis=2) <= 12)
        rows, cols = np.nonzero(close)
        assert close.sum() > 60_000, (name, int(close.sum()))
        assert cols.max() - cols.min() >= 340 and rows.max() - rows.min() >= 250, name  # one block, full size
    dark = (table_columns.max(axis=2) < 90).sum()  # text: names, classes, probabilities, the summary
    assert dark > 3_000, dark
    # The three photos are stacked in the picture column, in the order of the table's rows.
    tops = [np.nonzero((np.abs(picture_column - np.array(c)).max(axis=2) <= 12).any(axis=1))[0].min()
            for c in PHOTOS.values()]
    assert tops == sorted(tops)


class _Page(HTMLParser):
    """Text of the element with a given id, the scripts, and the data-probe attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts = 0
        self.probe: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        self.probe = attrs.get("data-probe", self.probe)

    def handle_data(self, data):
        self.text.append(data)


def dump(page: Path, tmp_path: Path) -> _Page:
    parsed = _Page()
    parsed.feed(chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout)
    return parsed


def test_the_page_scripts_run_and_names_stay_text(run, tmp_path):
    out, _ = run
    page = dump(out / "index.html", tmp_path)
    text = "".join(page.text)
    assert "4 of 4 images" in text  # written by the page's own script once it ran
    assert page.scripts == 1  # varrt's own: `<script>.png` is text, not an element
    assert "<script>.png" in text and "errors 1" in re.sub(r"\s+", " ", text)


_PROBE = """<script>
const result = {};
const visible = () => Array.from(document.querySelectorAll("#results tbody tr"))
  .filter((row) => !row.hidden).map((row) => row.cells[1].textContent);
const box = document.getElementById("filter");
box.value = QUERY;
box.dispatchEvent(new Event("input"));
result.filtered = visible();
result.shown = document.getElementById("shown").textContent;
box.value = "";
box.dispatchEvent(new Event("input"));
const header = Array.from(document.querySelectorAll("th")).find((th) => th.textContent.startsWith("confidence"));
header.click();
result.ascending = visible();
header.click();
result.descending = visible();
document.body.dataset.probe = JSON.stringify(result);
</script></body>"""


def test_filter_and_sort_in_the_browser(run, tmp_path):
    out, _ = run
    rows = [row for row in pq.read_table(out / "results.parquet").to_pylist() if row["error"] is None]
    query = rows[0]["class_names"][1].lower()  # a class name; which rows mention it comes from the table
    expected = [Path(r["path"]).name for r in rows
                if query in " ".join([r["predicted_name"], *r["class_names"]]).lower()]
    by_confidence = sorted(rows, key=lambda r: r["predicted_probability"])
    probe = out / "probe.html"  # beside index.html, so its relative thumbnail links resolve
    probe.write_text((out / "index.html").read_text(encoding="utf-8")
                     .replace("</body>", _PROBE.replace("QUERY", json.dumps(query))), encoding="utf-8")
    try:
        result = json.loads(dump(probe, tmp_path).probe or "{}")
    finally:
        probe.unlink()
    assert result["filtered"] == expected and result["shown"] == f"{len(expected)} of 4 images"
    ascending = [Path(r["path"]).name for r in by_confidence]
    assert result["ascending"] == ["broken.jpg", *ascending]  # the error row's confidence sorts as -1
    assert result["descending"] == [*ascending[::-1], "broken.jpg"]
