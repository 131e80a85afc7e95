"""A sharded dataset streamed for real (`data.name: shards`, `data.streaming: true`): shards written by
`python -m hw3.shards` from a real source read back sample for sample, every sample once per epoch, a resume that
ends bit for bit where an uninterrupted run does, shards fetched over HTTP into a bounded cache with retries, a
damaged sample skipped in one warning, a shard that cannot be had in one line."""

import functools
import http.server
import io
import json
import os
import shutil
import signal
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hw3.storage.remote
from hw3.cli.shards import main as shards_main
from hw3.config import DataConfig
from hw3.data import open_source

from formats import damage_tar_sample, write_hub_parquet, write_imagefolder
from helpers import RECIPES, at_crash_point, deterministic, read_metrics, read_summary

QUICK = RECIPES / "quickstart.yaml"
# the digits (1,294 train / 144 val / 359 test) as shards of 200; 2 epochs of 21 steps at 64
RUN = ["--recipe", QUICK, "data.name=shards", "train.epochs=2", "log.trackers=[]", "data.num_workers=0"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digit_shards):
    from hw3.cli.train import main

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert main([str(a) for a in [*RUN, f"data.path={digit_shards}", f"output_dir={run_dir}"]]) == 0
    return run_dir


def pixels(img) -> np.ndarray:
    return np.asarray(img)


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_written_shards_read_back_every_sample_of_the_source(tmp_path, kind):
    out = tmp_path / kind
    assert (
        shards_main(["write", "--out", str(out), "--samples-per-shard", "300", "--format", kind, "data.name=digits"])
        == 0
    )
    index = json.loads((out / "index.json").read_text())
    assert [s["samples"] for s in index["splits"]["train"]] == [300, 300, 300, 300, 94]
    assert index["classes"] == [str(c) for c in range(10)] and index["channels"] == 1 and index["side"] == 8
    source = open_source(DataConfig(name="digits"))
    streamed = open_source(DataConfig(name="shards", path=str(out)))
    for name in ("train", "val", "test"):
        theirs, mine = getattr(source, name), getattr(streamed, name)
        assert len(mine) == len(theirs)
        seen = {}
        for i in range(len(mine)):  # written in a seeded order: compare as (pixels, label) multisets
            img, label = mine.read(i)
            key = (pixels(img).tobytes(), label)
            seen[key] = seen.get(key, 0) + 1
        expected = {}
        for i in range(len(theirs)):
            key = (theirs.images[i][0].numpy().tobytes(), int(theirs.labels[i]))
            expected[key] = expected.get(key, 0) + 1
        assert seen == expected


def test_parquet_files_named_by_a_glob_are_indexed_once_and_read_again_from_that_index(tmp_path):
    """Parquet files need no index: their footers are read once and the counts kept in hw3's cache, keyed by the
    files (their size and time too) and the column keys. A second open reads that cached index: the same samples,
    from the same absolute paths; a rewritten file is indexed again."""
    out = tmp_path / "pq"
    assert shards_main(["write", "--out", str(out), "--samples-per-shard", "300", "--format", "parquet",
                        "data.name=digits"]) == 0  # fmt: skip
    cfg = DataConfig(name="shards", path=str(out / "train-*.parquet"), num_classes=10)
    first, again = open_source(cfg), open_source(cfg)
    assert [s.url for s in again.train.shards] == [s.url for s in first.train.shards]
    assert all(Path(s.url).is_file() for s in again.train.shards)
    assert len(again.train) + len(again.val) == 1294 and again.train.read(5)[1] == first.train.read(5)[1]
    shutil.copy(out / "train-00004.parquet", out / "train-00003.parquet")  # 94 rows now, not 300
    assert len(open_source(cfg).train) + len(open_source(cfg).val) == 1294 - 300 + 94


def test_every_sample_once_per_epoch_and_the_run_learns(digit_shards, tmp_path, monkeypatch, reference):
    monkeypatch.setenv("HW3_TRACE_SAMPLES", str(tmp_path))
    monkeypatch.setattr(hw3.data.shards.reader, "TRACE", str(tmp_path))
    from hw3.cli.train import main

    assert main([str(a) for a in [*RUN, f"data.path={digit_shards}", f"output_dir={tmp_path / 'run'}"]]) == 0
    lines = [line.split() for line in (tmp_path / "rank0.txt").read_text().splitlines()]
    train = [int(i) for url, i in lines if "train-" in url]
    assert len(train) == 2 * 1294
    for epoch in range(2):
        assert sorted(train[epoch * 1294 : (epoch + 1) * 1294]) == list(range(1294))
    assert train[:1294] != train[1294:]  # a new order every epoch
    assert read_summary(tmp_path / "run")["test_acc"] > 0.9
    assert deterministic(read_metrics(tmp_path / "run")) == deterministic(read_metrics(reference))


@pytest.mark.parametrize("moment", ["train_step:10", "train_step:21", "validation:1", "train_step:30"])
def test_a_streamed_run_stopped_anywhere_resumes_bit_for_bit(
    digit_shards, reference, tmp_path, monkeypatch, moment, train
):
    """SIGTERM mid-epoch, at an epoch's last step, in validation: the rerun reads exactly the samples an
    uninterrupted run would (without reading the epoch again from its start) and ends with its metrics and
    weights."""
    run_dir = tmp_path / "run"
    point, nth = moment.split(":")
    at_crash_point(monkeypatch, point, int(nth), lambda: os.kill(os.getpid(), signal.SIGTERM))
    stopped = train(*RUN, f"data.path={digit_shards}", f"output_dir={run_dir}")
    assert stopped.code == 143, stopped.err
    monkeypatch.undo()
    monkeypatch.setattr(hw3.data.shards.reader, "TRACE", str(tmp_path))
    again = train(*RUN, f"data.path={digit_shards}", f"output_dir={run_dir}")
    assert again.code == 0, again.err
    read = [line for line in (tmp_path / "rank0.txt").read_text().splitlines() if "train-" in line]
    step = int(nth) if point == "train_step" else 21  # steps done before the stop (21 an epoch; 1,294 samples)
    done = min(step * 64, 1294) + max(0, step - 21) * 64
    assert len(read) == 2 * 1294 - done  # nothing read twice
    assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(reference))
    final = "checkpoints/epoch0001-batch000021/model.safetensors"
    mine, theirs = load_file(str(run_dir / final)), load_file(str(reference / final))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


@pytest.fixture
def http_server(digit_shards):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(digit_shards.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *args: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_shards_over_http_stream_into_a_bounded_cache_and_train_the_same(
    http_server, reference, tmp_path, train, monkeypatch
):
    monkeypatch.setenv("HW3_CACHE", str(tmp_path / "cache"))
    result = train(*RUN, f"data.path={http_server}/digits", "data.cache_shards=8", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    assert deterministic(read_metrics(tmp_path / "run")) == deterministic(read_metrics(reference))
    cached = list((tmp_path / "cache" / "shards").glob("*/rank0/*.shard"))
    assert 0 < len(cached) <= 8  # never more than data.cache_shards on disk (of 10 shards)


def test_a_shard_that_cannot_be_fetched_is_retried_then_one_line(
    http_server, digit_shards, tmp_path, train, monkeypatch
):
    monkeypatch.setattr(hw3.storage.remote, "FIRST_PAUSE_S", 0.01)
    tries = []
    real = hw3.storage.remote.filesystem
    monkeypatch.setattr(hw3.storage.remote, "filesystem", lambda url: tries.append(url) or real(url))
    gone = digit_shards / "train-00003.tar"
    gone.rename(gone.with_suffix(".gone"))
    try:
        result = train(*RUN, f"data.path={http_server}/digits", f"output_dir={tmp_path / 'run'}")
    finally:
        gone.with_suffix(".gone").rename(gone)
    assert result.code == 2
    (line,) = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: cannot fetch {http_server}/digits/train-00003.tar (") and "tried 5 times" in line
    assert tries.count(f"{http_server}/digits/train-00003.tar") >= 5  # (and one try of the fetch ahead)


def test_a_damaged_sample_is_one_warning_counted_and_skipped(digit_shards, tmp_path, train):
    shards = tmp_path / "damaged"
    shutil.copytree(digit_shards, shards)
    key = damage_tar_sample(shards / "train-00002.tar", 7)
    label_key = damage_tar_sample(shards / "train-00004.tar", 5, ".cls", b"12")  # 10 classes
    val_key = damage_tar_sample(shards / "validation-00000.tar", 3)
    result = train(*RUN, f"data.path={shards}", "train.epochs=1", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: skipping")]
    said = "warning: skipping an unreadable sample: shard"
    assert sorted(w.split(": UnidentifiedImageError")[0] for w in warnings[:2]) == [
        f"{said} {shards / 'train-00002.tar'}, key {key}",
        f"{said} {shards / 'train-00004.tar'}, key {label_key}: label 12 is not one of the 10 classes",
    ]  # the training samples as the epoch meets them, the validation one as validation does (once: one epoch)
    assert warnings[2].startswith(f"{said} {shards / 'validation-00000.tar'}, key {val_key}: UnidentifiedImageError")
    assert read_metrics(tmp_path / "run")[0]["unreadable_samples"] == 2  # the training stream's
    strict = tmp_path / "strict"
    stopped = train(*RUN, f"data.path={shards}", "data.max_bad_samples=0", f"output_dir={strict}")
    assert stopped.code == 2
    assert (
        "error: data.max_bad_samples: 2 unreadable samples (over 0; the warnings above name each shard" in stopped.err
    )


def test_an_image_folder_written_as_shards_keeps_its_files_bytes_and_the_index_command(tmp_path, capsys, monkeypatch):
    write_imagefolder(tmp_path / "tree", per_class=10, seed=3)
    out = tmp_path / "shards"
    assert shards_main(["write", "--out", str(out), "--samples-per-shard", "7", "data.name=imagefolder",
                        f"data.root={tmp_path / 'tree'}"]) == 0  # fmt: skip
    with tarfile.open(out / "train-00000.tar") as tar:
        first = next(m for m in tar.getmembers() if m.name.endswith(".png"))
        data = tar.extractfile(first).read()
    files = {p.read_bytes() for p in (tmp_path / "tree").rglob("*.png")}
    assert data in files  # the file itself, not decoded and encoded again
    (out / "index.json").unlink()
    assert shards_main(["index", str(out / "train-{00000..00002}.tar")]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [s["samples"] for s in index["splits"]["train"]] == [7, 7, 6] and index["classes"] == ["0", "1"]
    assert [s["url"] for s in index["splits"]["train"]] == [f"train-0000{k}.tar" for k in range(3)]  # beside it
    # a pattern relative to the working folder, the index written elsewhere: it names the shards where they are
    monkeypatch.chdir(out)
    assert shards_main(["index", "train-{00000..00001}.tar", "--out", str(tmp_path / "two.json")]) == 0
    two = open_source(DataConfig(name="shards", path=str(tmp_path / "two.json")))
    assert len(two.train) + len(two.val) == 14  # (one of the two shards held out for validation)
    assert two.train.read(0)[1] in (0, 1) and two.val.read(0)[1] in (0, 1)  # the shards found where they are
    assert shards_main(["index", "train-00000.tar", "--classes", "1"]) == 2
    assert capsys.readouterr().err.endswith("error: --classes 1: the shards have label 1\n")


def test_a_hub_dataset_written_as_shards_keeps_its_encoded_images(tmp_path):
    """Photos of a Hub set go into the tar shards as the Hub stores them, JPEGs as JPEGs (not decoded and
    encoded again as PNGs, several times larger)."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    jpegs = []
    for k in range(24):  # mixed sizes: read from disk image by image, as photos are
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (70 + k, 90, 3), dtype=np.uint8)).save(out, format="JPEG")
        jpegs.append(out.getvalue())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"image": [{"bytes": b, "path": None} for b in jpegs], "label": [k % 2 for k in range(24)]}
    (tmp_path / "hub").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "hub/train-00000-of-00001.parquet"))
    assert shards_main(["write", "--out", str(tmp_path / "shards"), "data.name=hf",
                        f"data.path={tmp_path / 'hub'}"]) == 0  # fmt: skip
    with tarfile.open(tmp_path / "shards/train-00000.tar") as tar:
        written = {m.name.rsplit(".", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers() if not m.name.endswith(".cls")]
    assert names and all(n.endswith(".jpg") for n in names) and written["jpg"] in jpegs


def test_a_hub_dataset_streams_its_parquet_files(tmp_path, train):
    write_hub_parquet(tmp_path / "hub", "cifar100", n_train=40, n_test=20)
    args = ["--recipe", QUICK, "data.name=hf", f"data.path={tmp_path / 'hub'}", "data.streaming=true",
            "data.label_column=fine_label", "train.epochs=1", "train.batch_size=8", "data.num_workers=0",
            "log.trackers=[]", f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    result = train(*args)
    assert result.code == 0, result.err
    assert "streamed from" in result.out and "(parquet)" in result.out
    assert read_summary(tmp_path / "run")["test_images"] == 20


def test_tar_shards_without_an_index_are_one_line(digit_shards, tmp_path, train):
    result = train(*RUN, f"data.path={digit_shards}/train-{{00000..00002}}.tar", f"output_dir={tmp_path / 'r'}")
    assert result.code == 2
    assert "tar shards need an index of their sample counts; write one with python -m hw3.shards index" in result.err


def test_the_streaming_recipe_runs_on_shards_the_test_writes(digit_shards, tmp_path, train):
    """recipes/imagenet_streaming.yaml as shipped, but on the digits' shards (its Hub dataset needs a token and
    the network): the streamed path, with the recipe's shuffle window, cache, model and optimizer."""
    args = ["--recipe", RECIPES / "imagenet_streaming.yaml", "data.name=shards", f"data.path={digit_shards}",
            "data.streaming=false", "data.image_size=32", "data.num_workers=0", "data.max_train_samples=32",
            "data.max_eval_samples=16", "train.batch_size=16", "train.epochs=1", "log.trackers=[]",
            f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    result = train(*args)
    assert result.code == 0, result.err
    assert "model: resnet50" in result.out and "streamed from" in result.out
    assert read_summary(tmp_path / "run")["optimizer_steps"] == 2


def test_the_shard_cache_evicts_the_least_recently_used_but_never_one_being_opened(tmp_path):
    """Two workers share a process's cache (data.cache_shards=2 here): a fetch evicts the least recently used shard,
    and a shard another worker is fetching or opening (it holds that shard's lock) is passed over, not deleted
    under it. The shards live in fsspec's memory filesystem, standing in for an object store."""
    import fsspec

    from hw3.data.shards.index import Shard
    from hw3.data.shards.reader import ShardFiles

    memory = fsspec.filesystem("memory")
    shards = []
    for k in range(4):
        memory.pipe(f"/cache-test/s{k}.tar", bytes([k]) * (k + 1))
        shards.append(Shard(f"memory:///cache-test/s{k}.tar", 1, k + 1))
    mine, other = ShardFiles(tmp_path, keep=2), ShardFiles(tmp_path, keep=2)
    assert mine.local(shards[0]).read_bytes() == b"\x00"
    os.utime(mine.local(shards[1]), (1, 1))  # s1 now the least recently used
    os.utime(tmp_path / mine.local(shards[0]).name, (2, 2))
    mine.local(shards[2])  # keeps 2: s1 goes
    assert sorted(p.name.split("-", 1)[1] for p in tmp_path.glob("*.shard")) == ["s0.tar.shard", "s2.tar.shard"]

    def open_while_another_worker_fetches(path):
        os.utime(path, (0, 0))  # the oldest: the first to go, were it not held
        other.local(shards[3])  # its fetch evicts down to 1
        return path.read_bytes()

    assert mine.local(shards[0], opener=open_while_another_worker_fetches) == b"\x00"
    assert sorted(p.name.split("-", 1)[1] for p in tmp_path.glob("*.shard")) == ["s0.tar.shard", "s3.tar.shard"]
