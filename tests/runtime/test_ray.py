"""`varrt explain --ray` and varrt.ray.explain_dataset on a local Ray cluster (ray.init(num_cpus=2)):
the rows, .npz maps and PNGs of a Ray run over the bundled photos equal the single-process run's bit
for bit, with 2 actors and an undecodable file among the photos (its error row, the others'
results); a dataset decoded by ray.data.read_images gives the same rows and maps. Ray starts slowly,
so one cluster serves the module and the runs are few."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
from varrt import cli, data
from varrt.results import SCHEMA

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'varrt[ray]'")
ARGS = ["-m", "gradient", "--classes", "top2", "-q"]  # the cheapest method; K = 2 keeps it quick


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for photo in data.demo_images():
        shutil.copy(photo, folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


@pytest.fixture(scope="module")
def single_process(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    assert cli.main(["explain", str(data.demo_model_path()), str(photos), "-o", str(out), *ARGS]) == 0
    return out


def test_ray_run_with_two_actors_equals_the_single_process_run_bit_for_bit(cluster, photos, single_process,
                                                                           tmp_path):
    out = tmp_path / "ray"
    argv = ["explain", str(data.demo_model_path()), str(photos), "-o", str(out), *ARGS, "--ray", "--actors", "2"]
    assert cli.main(argv) == 0
    assert ray.is_initialized()  # the CLI joined the test's Ray and left it running

    ray_table = pq.read_table(out / "results.parquet")
    local_table = pq.read_table(single_process / "results.parquet")
    assert ray_table.schema.remove_metadata() == SCHEMA
    assert ray_table.equals(local_table)  # every column of every row, bit for bit, in the same order
    rows = ray_table.to_pylist()
    assert [row["stem"] for row in rows] == ["astronaut", "broken", "chelsea", "coffee", "rocket"]
    assert "cannot decode image" in rows[1]["error"] and rows[1]["class_ids"] is None
    assert all(row["error"] is None and len(row["class_ids"]) == 2 for i, row in enumerate(rows) if i != 1)

    written = sorted(p.name for p in out.iterdir() if p.suffix in (".npz", ".png"))
    assert written == sorted(p.name for p in single_process.iterdir() if p.suffix in (".npz", ".png"))
    assert len(written) == 8
    for name in written:
        if name.endswith(".npz"):
            with np.load(out / name) as a, np.load(single_process / name) as b:
                assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), name
        else:
            assert (out / name).read_bytes() == (single_process / name).read_bytes(), name
    assert "<b>errors</b> 1" in (out / "index.html").read_text(encoding="utf-8")


def test_explain_dataset_on_images_decoded_by_ray(cluster, photos, single_process):
    from varrt.ray import MAP_COLUMNS, explain_dataset

    good = sorted(str(p) for p in photos.iterdir() if p.name != "broken.jpg")[:2]
    images = ray.data.read_images(good, include_paths=True, mode="RGB")
    rows = explain_dataset(images, data.demo_model_path(), maps=True, method="gradient", classes="top2").take_all()
    assert len(rows) == 2 and set(rows[0]) == set(SCHEMA.names) | set(MAP_COLUMNS)

    local = pq.read_table(single_process / "results.parquet")
    stems = [row["stem"] for row in rows]
    expected = local.filter(pa.compute.is_in(local["stem"], pa.array(stems))).drop_columns(["path"])
    got = pa.Table.from_pylist([{k: _plain(row[k]) for k in SCHEMA.names} for row in rows], schema=SCHEMA)
    assert got.drop_columns(["path"]).equals(expected)  # path: Ray's own spelling of it
    for row in rows:
        stem = row["stem"]
        with np.load(single_process / f"{stem}.npz") as saved:
            np.testing.assert_array_equal(row["attributions"], saved["attributions"])
            np.testing.assert_array_equal(row["var"], saved["var"])
            np.testing.assert_array_equal(row["all_logits"], saved["logits"])


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value
