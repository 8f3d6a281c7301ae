"""OUT/index.html: written by `varrt explain`, rebuilt by `varrt report OUT`, user text escaped.
The real Explainer on the linear classifier of tests/testbed.py; the page is parsed with Python's
own HTML parser (no browser here)."""

from __future__ import annotations

from html.parser import HTMLParser

import onnx
import pyarrow.parquet as pq
import pytest
import testbed
from PIL import Image
from varrt import cli

SHAPE = (3, 8, 8)
NUM_CLASSES = 7
W, B = testbed.linear_weights(SHAPE, NUM_CLASSES)
EVIL_CLASS = '<img src=x onerror="alert(1)">'


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    tags = _Tags()
    tags.feed(path.read_text(encoding="utf-8"))
    return tags


@pytest.fixture
def run(tmp_path):
    model = tmp_path / "linear.onnx"
    onnx.save(testbed.linear_classifier(W, B, SHAPE, preset="none"), model)
    labels = tmp_path / "labels.txt"
    labels.write_text(EVIL_CLASS + "\n" + "".join(f"thing {i}\n" for i in range(1, NUM_CLASSES)))
    photos = [testbed.write_png(tmp_path / name, size=(40, 30), seed=i)
              for i, name in enumerate(["<script>.png", "plain.png", "a&b.png"])]

    def explain(out, *extra):
        argv = ["explain", str(model), *map(str, photos), "-o", str(out), "--labels", str(labels), "-q",
                "-m", "gradient", "--classes", "0,2", *extra]
        assert cli.main(argv) == 0
        return out

    return explain, photos


def test_names_are_escaped(run, tmp_path):
    explain, _ = run
    out = explain(tmp_path / "out")
    page = (out / "index.html").read_text(encoding="utf-8")
    tags = parse(out / "index.html")
    assert [tag for tag, _ in tags.tags].count("script") == 1  # varrt's own, nothing from a name
    assert not [attrs for tag, attrs in tags.tags if "onerror" in attrs]
    assert "&lt;script&gt;.png" in page and "<script>.png" not in page
    assert '<img src=x onerror="alert(1)">' not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    text = "".join(tags.text)
    assert "<script>.png" in text and EVIL_CLASS in text and "a&b.png" in text  # shown as text
    links = [attrs["href"] for tag, attrs in tags.tags if tag == "a"]
    assert "%3Cscript%3E.png" in links and "a%26b.png" in links  # percent-encoded links to the overlays


def test_one_row_per_image_with_lazy_thumbnails(run, tmp_path):
    explain, photos = run
    out = explain(tmp_path / "out")
    tags = parse(out / "index.html")
    rows = [attrs for tag, attrs in tags.tags if tag == "tr" and attrs.get("class") == "row"]
    assert len(rows) == len(photos) == pq.read_table(out / "results.parquet").num_rows
    images = [attrs for tag, attrs in tags.tags if tag == "img"]
    assert len(images) == len(photos) and all(attrs["loading"] == "lazy" for attrs in images)
    for photo in photos:
        with Image.open(out / "thumbs" / f"{photo.stem}.jpg") as thumb, Image.open(out / f"{photo.stem}.png") as full:
            assert thumb.format == "JPEG" and thumb.width == min(360, full.width)
    assert all(attrs["data-classes"].count(EVIL_CLASS.lower()) >= 1 for attrs in rows)  # what the filter reads
    text = "".join(tags.text)
    assert "gradient" in text and "linear.onnx" in text  # the run's summary


def test_report_command_rebuilds_the_page_from_the_table(run, tmp_path, capsys):
    explain, photos = run
    out = explain(tmp_path / "out", "--save", "summary")
    page = (out / "index.html").read_bytes()
    (out / "index.html").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "index.html").read_bytes() == page
    assert "index.html" in capsys.readouterr().out
    # Without overlays the thumbnails are the photos themselves.
    with Image.open(out / "thumbs" / "plain.jpg") as thumb:
        assert thumb.size == (40, 30)
    # A photo moved away since: its row stays, without a picture.
    photos[1].rename(tmp_path / "moved.png")
    (out / "thumbs" / "plain.jpg").unlink()
    assert cli.main(["report", str(out)]) == 0
    tags = parse(out / "index.html")
    assert len([1 for tag, attrs in tags.tags if tag == "tr" and attrs.get("class") == "row"]) == len(photos)
    assert len([1 for tag, _ in tags.tags if tag == "img"]) == len(photos) - 1


def test_report_without_a_results_table_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read results table" in err
