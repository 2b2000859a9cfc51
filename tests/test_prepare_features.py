"""`vqacap prepare features` on small files written in the public formats (TSV, bottom-up-attention-vqa HDF5, npz)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import resource
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import VQACAP
from vqacap.cli import main
from vqacap.data.store import RegionStore, RegionStoreWriter, partial_path
from vqacap.prepare.features import Source, convert, h5_source, npz_source, tsv_source

D = 2048


def make_image(image_id: int, k: int, w: int = 640, h: int = 480) -> tuple[np.ndarray, np.ndarray, int, int]:
    rng = np.random.default_rng(image_id)
    x1, y1 = rng.uniform(0, w / 2, k), rng.uniform(0, h / 2, k)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, k), y1 + rng.uniform(1, h / 2, k)], 1).astype(
        np.float32
    )
    features = rng.uniform(0, 10, (k, D)).astype(np.float32)  # ReLU outputs: non-negative
    return features, boxes, w, h


def tsv_line(
    image_id: int, features: np.ndarray, boxes: np.ndarray, w: int, h: int, num_boxes: int | None = None
) -> str:
    b64 = [base64.b64encode(a.astype(np.float32).tobytes()).decode() for a in (boxes, features)]
    return "\t".join(
        [str(image_id), str(w), str(h), str(len(boxes) if num_boxes is None else num_boxes), *b64]
    )


@pytest.fixture
def tsv_file(tmp_path):
    """Good rows (36 boxes and adaptive 12), plus each kind of corrupt row the public files have or could have."""
    lines = [
        tsv_line(1, *make_image(1, 36)),
        tsv_line(2, *make_image(2, 12)),
    ]
    padding = tsv_line(3, *make_image(3, 36)).split("\t")
    padding[4] = padding[4][:-2]  # as the 3 bad rows of test2014: "Incorrect padding"
    lines.append("\t".join(padding))
    lines.append(tsv_line(5, *make_image(5, 10), num_boxes=11))  # num_boxes disagrees with the arrays
    features, boxes, w, h = make_image(6, 20)
    boxes[3] = [10, 10, w + 50, h]  # outside the image
    lines.append(tsv_line(6, features, boxes, w, h))
    lines.append(tsv_line(1, *make_image(1, 36)))  # duplicate id
    lines.append(tsv_line(7, *make_image(7, 36)))
    lines.append(tsv_line(4, *make_image(4, 36))[:5000])  # truncated line: the file ends mid-row
    path = tmp_path / "test2014_resnet101_faster_rcnn_genome.tsv"
    path.write_text("\n".join(lines))
    return path


def test_tsv_converts_good_rows_and_reports_corrupt_ones(tsv_file, tmp_path):
    out = tmp_path / "store.h5"
    summary = convert(tsv_source([tsv_file]), out, progress=False)
    assert (summary.converted, summary.skipped, len(summary.corrupt)) == (3, 0, 5)
    report = "\n".join(summary.corrupt)
    assert f"image 3 ({tsv_file}:3): boxes: bad base64 (Incorrect padding)" in report
    assert f"image 5 ({tsv_file}:4): boxes hold 40 floats, num_boxes=11 needs 44" in report
    assert f"image 6 ({tsv_file}:5): box 3" in report
    assert f"image 1 ({tsv_file}:6): duplicate image id (first at {tsv_file}:1)" in report
    assert f"image 4 ({tsv_file}:8)" in report

    store = RegionStore(out)
    assert sorted(store.image_ids.tolist()) == [1, 2, 7]
    features, boxes = store.read(2)
    want_features, want_boxes, w, h = make_image(2, 12)
    assert features.dtype == np.float16 and features.shape == (12, D)
    np.testing.assert_allclose(features, want_features, rtol=1e-3)
    np.testing.assert_array_equal(boxes, want_boxes)
    assert (store.image_w[store.row(2)], store.image_h[store.row(2)]) == (w, h)


def test_rerun_skips_what_the_store_holds(tsv_file, tmp_path):
    out = tmp_path / "store.h5"
    convert(tsv_source([tsv_file]), out, progress=False)
    again = convert(tsv_source([tsv_file]), out, progress=False)
    assert (again.converted, again.skipped) == (0, 3)
    assert len(RegionStore(out)) == 3


def test_interrupted_conversion_resumes(tmp_path):
    images = {i: make_image(i, 10 + i) for i in range(1, 9)}
    tsv = tmp_path / "features.tsv"
    tsv.write_text("\n".join(tsv_line(i, *image) for i, image in images.items()) + "\n")
    out = tmp_path / "store.h5"

    source = tsv_source([tsv])

    def interrupted_rows():
        for n, row in enumerate(source.rows):
            if n == 5:
                raise KeyboardInterrupt
            yield row

    with pytest.raises(KeyboardInterrupt):
        convert(Source(interrupted_rows(), source.total, source.unit), out, progress=False)
    # A hard kill can also leave regions (and part of the index) of an image that was being written.
    with h5py.File(out, "a") as f:
        end = f["features"].shape[0]
        f["features"].resize((end + 7, D))
        f["boxes"].resize((end + 7, 4))
        f["image_ids"].resize((len(f["image_ids"]) + 1,))
        f["image_ids"][-1] = 6

    resumed = convert(tsv_source([tsv]), out, progress=False)
    assert (resumed.converted, resumed.skipped, resumed.corrupt) == (3, 5, [])
    store = RegionStore(out)
    assert sorted(store.image_ids.tolist()) == list(images)
    for i, (features, boxes, _, _) in images.items():
        got_features, got_boxes = store.read(i)
        np.testing.assert_allclose(got_features, features, rtol=1e-3)
        np.testing.assert_array_equal(got_boxes, boxes)
    assert store.region_start[-1] + store.num_regions[-1] == sum(10 + i for i in images)


def spatial_features(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """As bottom-up-attention-vqa's converter: (x1/w, y1/h, x2/w, y2/h, bw/w, bh/h)."""
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] / w, boxes[:, 1] / h, boxes[:, 2] / w, boxes[:, 3] / h, bw / w, bh / h], 1)


def convert_h5(h5: Path, ids: Path, out: Path, *extra: str) -> int:
    """`vqacap prepare features --h5` (an HDF5 file and its id pickle); its exit code."""
    return main(["prepare", "features", "--h5", str(h5), "--ids", str(ids), "--out", str(out), *extra])


def test_bottom_up_attention_vqa_hdf5_recovers_image_sizes(tmp_path):
    sizes = {9: (640, 480), 25: (500, 375), 30: (427, 640)}
    images = {i: make_image(i, 36, *wh) for i, wh in sizes.items()}
    order = [25, 9, 30]  # file rows
    path = tmp_path / "train36.hdf5"
    with h5py.File(path, "w") as f:
        f["image_features"] = np.stack([images[i][0] for i in order])
        f["image_bb"] = np.stack([images[i][1] for i in order])
        f["spatial_features"] = np.stack([spatial_features(images[i][1], *sizes[i]) for i in order])
    ids = tmp_path / "train36_imgid2idx.pkl"
    # Python 2 cPickle protocol, numpy ids as some forks write them.
    ids.write_bytes(pickle.dumps({np.int64(i): row for row, i in enumerate(order)} | {99: 7}, protocol=2))

    out = tmp_path / "store.h5"
    summary = convert(h5_source(path, ids, {}), out, progress=False)
    assert (summary.converted, len(summary.corrupt)) == (3, 1)
    assert "image 99" in summary.corrupt[0] and "row 7 is outside the file's 3 images" in summary.corrupt[0]
    store = RegionStore(out)
    assert store.image_ids.tolist() == order
    for i, (w, h) in sizes.items():
        n = store.row(i)
        assert (store.image_w[n], store.image_h[n]) == (w, h)
        np.testing.assert_array_equal(store.read(i)[1], images[i][1])


def test_adaptive_hdf5_with_pos_boxes_and_coco_sizes(tmp_path):
    images = {1: make_image(1, 10, 300, 200), 2: make_image(2, 100, 320, 240)}
    path = tmp_path / "train.hdf5"
    with h5py.File(path, "w") as f:
        f["image_features"] = np.concatenate([images[1][0], images[2][0]])
        f["image_bb"] = np.concatenate([images[1][1], images[2][1]])
        f["pos_boxes"] = np.array([[0, 10], [10, 110]], dtype=np.int32)
    ids = tmp_path / "train_imgid2idx.pkl"
    ids.write_bytes(pickle.dumps({1: 0, 2: 1}))
    coco = tmp_path / "captions_train2014.json"
    coco.write_text(
        json.dumps(
            {"images": [{"id": 1, "width": 300, "height": 200}, {"id": 2, "width": 320, "height": 240}]}
        )
    )

    out = tmp_path / "store.h5"
    assert convert_h5(path, ids, out, "--image-sizes", str(coco), "--dtype", "float32", "--no-progress") == 0
    store = RegionStore(out)
    assert store.num_regions.tolist() == [10, 100]
    np.testing.assert_array_equal(store.read(2)[0], images[2][0])


def test_hdf5_without_sizes_or_spatial_features_is_reported(tmp_path, capsys):
    path = tmp_path / "val36.hdf5"
    with h5py.File(path, "w") as f:
        f["image_features"] = make_image(1, 36)[0][None]
        f["image_bb"] = make_image(1, 36)[1][None]
    ids = tmp_path / "val36_imgid2idx.pkl"
    ids.write_bytes(pickle.dumps({1: 0}))
    code = convert_h5(path, ids, tmp_path / "s.h5", "--no-progress")
    assert code == 1
    assert "image size unknown" in capsys.readouterr().out


def test_id_pickle_that_runs_code_is_refused(tmp_path, capsys):
    ids = tmp_path / "evil.pkl"
    ids.write_bytes(pickle.dumps({1: print}))
    assert convert_h5(tmp_path / "x.h5", ids, tmp_path / "s.h5") == 2
    assert "refusing to load builtins.print" in capsys.readouterr().err


def test_npz_directories_of_both_popular_layouts(tmp_path):
    # ruotianluo/self-critical.pytorch: cocobu_att/<id>.npz (feat) + cocobu_box/<id>.npy, sizes from COCO JSON.
    att, box = tmp_path / "cocobu_att", tmp_path / "cocobu_box"
    att.mkdir()
    box.mkdir()
    images = {42: make_image(42, 36, 500, 333), 7: make_image(7, 36, 640, 427)}
    for i, (features, boxes, _, _) in images.items():
        np.savez_compressed(att / f"{i}", feat=features)
        np.save(box / f"{i}", boxes)
    coco = tmp_path / "instances_val2014.json"
    coco.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"}
                    for i, (_, _, w, h) in images.items()
                ]
            }
        )
    )
    out = tmp_path / "store.h5"
    summary = convert(npz_source(att, box, {42: (500, 333), 7: (640, 427)}), out, progress=False)
    assert (summary.converted, summary.corrupt) == (2, [])
    store = RegionStore(out)
    assert store.image_ids.tolist() == [42, 7]  # sorted by file name
    np.testing.assert_array_equal(store.read(42)[1], images[42][1])
    store.close()  # before the next conversion opens the file for writing

    # MILVLG/airsplay style: x (here stored (D, k) as MCAN's files), bbox, num_bbox, image_w, image_h, info.
    npz = tmp_path / "npz"
    npz.mkdir()
    features, boxes, w, h = make_image(391895, 23, 640, 360)
    np.savez_compressed(
        npz / "COCO_val2014_000000391895.jpg.npz",
        x=features.T,
        bbox=boxes,
        num_bbox=23,
        image_w=w,
        image_h=h,
        info={"objects_id": [1, 2]},
    )
    features2, boxes2, w2, h2 = make_image(9, 15)
    np.savez_compressed(
        npz / "COCO_val2014_000000000009.jpg.npz",
        x=features2,
        bbox=boxes2,
        num_bbox=16,
        image_w=w2,
        image_h=h2,
    )
    (npz / "notes.npz").write_bytes(b"not a zip")
    summary = convert(npz_source(npz, None, {}), out, progress=False)
    assert summary.converted == 1
    assert sorted(summary.corrupt) == [
        f"image 9 ({npz}/COCO_val2014_000000000009.jpg.npz): num_bbox=16 but 15 boxes",
        f"image ? ({npz}/notes.npz): no image id (digits) in the file name",
    ]
    store = RegionStore(out)
    np.testing.assert_allclose(store.read(391895)[0], features, rtol=1e-3)
    assert (store.image_w[store.row(391895)], store.image_h[store.row(391895)]) == (640, 360)


def test_cli_summary_and_exit_status(tsv_file, tmp_path, capsys):
    out = tmp_path / "store.h5"
    assert main(["prepare", "features", "--tsv", str(tsv_file), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "converted 3, skipped 0 already in the store, corrupt 5" in printed
    assert f"corrupt: image 3 ({tsv_file}:3): boxes: bad base64 (Incorrect padding)" in printed

    only_bad = tmp_path / "bad.tsv"
    only_bad.write_text("123\t640\t480\t36\tAAA\tAAA\n")
    assert (
        main(
            ["prepare", "features", "--tsv", str(only_bad), "--out", str(tmp_path / "s.h5"), "--no-progress"]
        )
        == 1
    )
    assert main(["prepare", "features", "--tsv", str(tmp_path / "missing.tsv"), "--out", str(out)]) == 2


def test_buffered_writer_writes_the_same_store_as_unbuffered(tmp_path):
    for buffer in (0, 40):
        with RegionStoreWriter(tmp_path / f"b{buffer}.h5", D, buffer_regions=buffer) as writer:
            for i in range(30):
                features, boxes, w, h = make_image(i, 5 + i % 7)
                writer.add(i, features, boxes, w, h)
                features[:] = -1  # the caller reusing its buffer must not change what was queued
    with h5py.File(tmp_path / "b0.h5") as a, h5py.File(tmp_path / "b40.h5") as b:
        for name in ("image_ids", "image_w", "image_h", "num_regions", "region_start", "features", "boxes"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
        assert (a["features"][:] >= 0).all()


# ------------------------------------------------------------------------------------------- kills, full disks, locks

REPO = Path(__file__).resolve().parent.parent
SMALL_D = 8  # small rows: hundreds of images stream through a pipe in well under a second
ROWS_PER_FLUSH = 4096 // 36 + 1  # the converter's write buffer holds 4096 regions


def small_images(ids) -> dict[int, tuple[np.ndarray, np.ndarray, int, int]]:
    images = {}
    for i in ids:
        rng = np.random.default_rng(i)
        x1, y1 = rng.uniform(0, 300, 36), rng.uniform(0, 200, 36)
        boxes = np.stack([x1, y1, x1 + rng.uniform(1, 300, 36), y1 + rng.uniform(1, 200, 36)], 1)
        images[i] = rng.uniform(0, 10, (36, SMALL_D)).astype(np.float32), boxes.astype(np.float32), 640, 480
    return images


def write_tsv(path: Path, images: dict) -> Path:
    path.write_text("".join(tsv_line(i, *image) + "\n" for i, image in images.items()))
    return path


def start_conversion(tsv: Path, out: Path, preexec_fn=None) -> subprocess.Popen:
    command = [*VQACAP, "prepare", "features", "--tsv", str(tsv), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=preexec_fn,
    )  # fmt: skip


def assert_store_holds(out: Path, images: dict, ids) -> None:
    """The store at `out` opens, validates, and holds exactly `ids`, with the source's regions."""
    store = RegionStore(out)
    assert sorted(store.image_ids.tolist()) == sorted(ids)
    for i in ids:
        features, boxes = store.read(i)
        np.testing.assert_allclose(features, images[i][0], rtol=1e-3)
        np.testing.assert_array_equal(boxes, images[i][1])


def feed_and_signal(tmp_path: Path, out: Path, images: dict, lines: int, sig: int) -> subprocess.Popen:
    """Convert from a pipe, send `sig` once `lines` rows are written into it, and wait for the process to end."""
    fifo = tmp_path / f"pipe-{lines}-{sig}.tsv"
    os.mkfifo(fifo)
    process = start_conversion(fifo, out)
    with open(fifo, "w") as pipe:  # blocks until the converter opens the pipe
        for i in list(images)[:lines]:
            pipe.write(tsv_line(i, *images[i]) + "\n")
        pipe.flush()
        time.sleep(
            0.3
        )  # it reads what is buffered; the rows it has read are at least `lines` minus a pipe's worth
        process.send_signal(sig)
        process.wait(timeout=60)
    return process


@pytest.mark.parametrize("lines", [ROWS_PER_FLUSH // 2, 3 * ROWS_PER_FLUSH])
def test_a_new_store_killed_mid_conversion_resumes_from_what_was_flushed(tmp_path, lines):
    images = small_images(range(1, 4 * ROWS_PER_FLUSH))
    out = tmp_path / "store.h5"
    killed = feed_and_signal(tmp_path, out, images, lines, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()  # the store's name only ever holds a committed store

    rerun = start_conversion(write_tsv(tmp_path / "all.tsv", images), out)
    stdout, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    skipped = int(stdout.split("skipped ")[1].split()[0])
    if (
        lines > 2 * ROWS_PER_FLUSH
    ):  # at least two buffers were flushed before the kill, and are not converted again
        assert skipped >= ROWS_PER_FLUSH and "resuming an interrupted conversion" in stderr
    assert f"converted {len(images) - skipped}," in stdout
    assert_store_holds(out, images, images)
    assert not partial_path(out).exists()


def test_an_existing_store_survives_kills_at_any_moment_and_the_rerun_completes_it(tmp_path):
    images = small_images(range(1, 6 * ROWS_PER_FLUSH))
    first = dict(list(images.items())[:ROWS_PER_FLUSH])
    out = tmp_path / "store.h5"
    assert convert(
        tsv_source([write_tsv(tmp_path / "first.tsv", first)]), out, progress=False
    ).converted == len(first)
    committed = out.read_bytes()
    everything = write_tsv(tmp_path / "all.tsv", images)
    # Kills at several moments of the run: start-up, copying the store, writing buffers, flushing.
    for delay in (0.2, 0.6, 0.9, 1.3):
        process = start_conversion(everything, out)
        time.sleep(delay)
        process.kill()
        process.wait(timeout=60)
        if process.returncode == 0 or out.read_bytes() != committed:
            # It finished first (killed, if at all, after its commit): the store is the complete one.
            assert_store_holds(out, images, images)
            break
        # Otherwise the previous store is there, untouched (the condition above).
    # Killed after writing from a pipe too, with the partial copy holding more than the store.
    before = out.read_bytes()
    feed_and_signal(tmp_path, out, images, 4 * ROWS_PER_FLUSH, signal.SIGKILL)
    assert out.read_bytes() == before
    rerun = start_conversion(everything, out)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    assert_store_holds(out, images, images)


def test_sigterm_commits_a_shorter_valid_store_and_the_rerun_completes_it(tmp_path):
    images = small_images(range(1, 4 * ROWS_PER_FLUSH))
    out = tmp_path / "store.h5"
    process = feed_and_signal(tmp_path, out, images, 2 * ROWS_PER_FLUSH, signal.SIGTERM)
    assert process.returncode == 130
    assert "interrupted: the images converted so far are in" in process.stderr.read()
    assert not partial_path(out).exists()
    held = RegionStore(out).image_ids.tolist()
    assert ROWS_PER_FLUSH <= len(held) <= 2 * ROWS_PER_FLUSH
    assert_store_holds(out, images, list(images)[: len(held)])  # a prefix of the input, every image whole

    rerun = start_conversion(write_tsv(tmp_path / "all.tsv", images), out)
    stdout, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    assert f"converted {len(images) - len(held)}, skipped {len(held)}" in stdout
    assert_store_holds(out, images, images)


def test_a_full_disk_is_one_line_and_leaves_the_store_intact(tmp_path):
    images = small_images(range(1, 6 * ROWS_PER_FLUSH))
    out = tmp_path / "store.h5"
    convert(
        tsv_source([write_tsv(tmp_path / "first.tsv", dict(list(images.items())[:50]))]), out, progress=False
    )
    committed = out.read_bytes()
    limit = len(committed) + 200_000  # room for the copy of the store and a little more

    def full_disk() -> None:  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    everything = write_tsv(tmp_path / "all.tsv", images)
    process = start_conversion(everything, out, preexec_fn=full_disk)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr  # not a segfault (-11) nor a traceback
    assert stderr.strip().splitlines() == [
        f"error: {partial_path(out)}: write failed (File too large); {out} is unchanged"
    ]
    assert out.read_bytes() == committed
    # With room again, the same command finishes the job.
    rerun = start_conversion(everything, out)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    assert_store_holds(out, images, images)


def test_a_second_writer_is_told_the_store_is_in_use(tmp_path, capsys):
    images = small_images([1, 2])
    out = tmp_path / "store.h5"
    tsv = write_tsv(tmp_path / "a.tsv", images)
    with RegionStoreWriter(out, SMALL_D) as writer:
        writer.add(1, *images[1])
        second = start_conversion(tsv, out)
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 2
        assert (
            stderr.strip()
            == f"error: {partial_path(out)}: in use by another process (another run is writing this store)"
        )
    assert_store_holds(out, images, [1])


# ------------------------------------------------------------------------------------------------ one bad row each


def test_bad_tsv_rows_are_reported_and_the_buffered_good_rows_kept(tmp_path):
    images = small_images(range(1, 8))
    lines = [tsv_line(i, *image) for i, image in images.items()]
    lines[2] = tsv_line(3, *images[3][:2], "inf", 480)  # a size float() accepts and int() does not
    lines[4] = tsv_line(2**63 + 5, *images[5])  # an id above int64, queued behind good rows
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "store.h5"
    summary = convert(tsv_source([path]), out, progress=False)
    assert summary.converted == 5
    assert summary.corrupt == [
        f"image 3 ({path}:3): unreadable id, size or num_boxes (image size inf is not a whole number of pixels)",
        f"image {2**63 + 5} ({path}:5): image id {2**63 + 5} is not in 0 .. 2^63 - 1",
    ]
    assert_store_holds(out, images, [1, 2, 4, 6, 7])


def test_bad_hdf5_index_entries_and_spatial_features_are_reported_rows(tmp_path):
    images = {i: make_image(i, 36) for i in (1, 2)}
    path = tmp_path / "train36.hdf5"
    with h5py.File(path, "w") as f:
        f["image_features"] = np.stack([images[i][0] for i in (1, 2)])
        f["image_bb"] = np.stack([images[i][1] for i in (1, 2)])
        spatial = np.stack([spatial_features(images[i][1], 640, 480) for i in (1, 2)])
        f["spatial_features"] = np.concatenate([spatial, np.zeros((2, 36, 1))], axis=2)  # 7 columns, not 6
    ids = tmp_path / "ids.pkl"
    ids.write_bytes(pickle.dumps({"abc": 0, 2: 1, 3: "x"}))
    coco = tmp_path / "sizes.json"
    coco.write_text(json.dumps({"images": [{"id": 2, "width": 640, "height": 480}]}))
    out = tmp_path / "store.h5"
    summary = convert(h5_source(path, ids, {2: (640, 480)}), out, progress=False)
    assert summary.converted == 1
    assert summary.corrupt == [
        f"image ? ({ids}): id pickle entry 'abc': 0 is not image id (integer) -> row (integer)",
        f"image ? ({ids}): id pickle entry 3: 'x' is not image id (integer) -> row (integer)",
    ]
    assert RegionStore(out).image_ids.tolist() == [2]
    # Without a size for image 2, the size comes from the 7-column spatial_features, which are refused.
    summary = convert(h5_source(path, ids, {}), tmp_path / "other.h5", progress=False)
    assert (
        summary.corrupt[-1]
        == f"image 2 ({path}:row 1): spatial_features have shape (36, 7), expected (36, 6)"
    )


def test_bad_npz_files_are_reported_rows(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    images = {i: make_image(i, 10, 300, 200) for i in (1, 2, 3)}
    for i, (features, boxes, w, h) in images.items():
        np.savez(folder / f"{i}", x=features, bbox=boxes, num_bbox=10, image_w=w, image_h=h)
    data = (folder / "2.npz").read_bytes()
    (folder / "2.npz").write_bytes(data[: len(data) // 2])  # truncated download
    features, boxes, _, _ = images[3]
    np.savez(folder / "3", x=features, bbox=boxes, image_w=np.array([300, 301]), image_h=200)
    summary = convert(npz_source(folder, None, {}), tmp_path / "store.h5", progress=False)
    assert summary.converted == 1
    assert summary.corrupt[0].startswith(f"image 2 ({folder / '2.npz'}): unreadable npz (BadZipFile: ")
    assert (
        summary.corrupt[1]
        == f"image 3 ({folder / '3.npz'}): image_w '[300 301]' is not a whole number of pixels"
    )
    assert RegionStore(tmp_path / "store.h5").image_ids.tolist() == [1]


def test_an_image_id_out_of_range_is_a_corrupt_row(tmp_path):
    path = tmp_path / "features.tsv"
    path.write_text("\n".join([tsv_line(-1, *make_image(1, 10)), tsv_line(2, *make_image(2, 10)),
                                tsv_line(2**64, *make_image(3, 10))]))  # fmt: skip
    summary = convert(tsv_source([path]), tmp_path / "store.h5", progress=False)
    assert summary.converted == 1 and summary.corrupt == [
        f"image -1 ({path}:1): image id -1 is not in 0 .. 2^63 - 1",
        f"image {2**64} ({path}:3): image id {2**64} is not in 0 .. 2^63 - 1",
    ]
    assert RegionStore(tmp_path / "store.h5").image_ids.tolist() == [2]
