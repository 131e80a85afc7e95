"""hw3.predict classifies image files as the model's evaluation did (its accuracy on a run's test images is exactly
hw3.evaluate's), reads any mode, and reports an unreadable file in one line; hw3.export writes ONNX,
TorchScript and a Hub folder, each verified against the PyTorch model."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hw3.cli.evaluate import main as evaluate_main
from hw3.cli.export import main as export_main
from hw3.cli.predict import main as predict_main

from formats import write_imagefolder
from helpers import RECIPES

QUICK = RECIPES / "quickstart.yaml"


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A small CNN trained on an image folder of 24 px PNGs (test/ holds 2 x 20 images), with flip TTA."""
    from hw3.cli.train import main

    tmp = tmp_path_factory.mktemp("predict")
    write_imagefolder(tmp / "tree", per_class=20, seed=5)
    args = ["--recipe", QUICK, "data.name=imagefolder", f"data.root={tmp / 'tree'}", "train.batch_size=8"]
    args += ["train.epochs=2", "eval.tta=flip", "log.trackers=[]", f"output_dir={tmp / 'run'}"]
    assert main([str(a) for a in args]) == 0
    return tmp


def test_predicting_the_test_images_gives_exactly_the_accuracy_evaluate_reports(folder_run, capsys):
    assert evaluate_main([str(folder_run / "run")]) == 0
    metrics = json.loads((folder_run / "run/eval/test-best/metrics.json").read_text())
    out = folder_run / "predictions.csv"
    assert predict_main([str(folder_run / "run"), "--folder", str(folder_run / "tree/test"), "--out", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["count"] == 40
    right = sum(row["class_1"] == row["file"].split("/")[-2] for row in rows)  # test/<class>/<image>
    assert right / len(rows) == metrics["acc"] and metrics["tta"] == "flip"
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 41 and lines[-1].endswith("/test/dog/9.png: " + ", ".join(
        f"{rows[-1][f'class_{k}']} {float(rows[-1][f'prob_{k}']):.3f}" for k in (1, 2)))  # fmt: skip


def test_any_mode_is_read_and_an_unreadable_file_is_one_line(folder_run, tmp_path, capsys):
    pixels = np.asarray(Image.open(folder_run / "tree/test/cat/0.png"))
    Image.fromarray(pixels).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(pixels).resize((96, 96)).save(tmp_path / "large.webp")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # 16-bit grayscale
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "p.json"
    code = predict_main(
        [str(folder_run / "run"), *sorted(map(str, tmp_path.glob("*.*"))), "--top-k", "1", "--out", str(out)]
    )
    assert code == 1  # some failed
    rows = {row["file"].split("/")[-1]: row for row in json.loads(out.read_text())}
    assert "error" in rows["broken.png"] and all("top" in rows[n] for n in rows if n not in ("broken.png", "p.json"))
    assert all(rows[n]["top"][0][0] == "cat" for n in ("gray.png", "rgba.png", "photo.jpg", "large.webp"))
    captured = capsys.readouterr()
    assert (
        f"{tmp_path / 'broken.png'}: cannot read: " in captured.out
        and "1 of 6 image(s) could not be read" in captured.err
    )


def test_predict_mistakes_are_one_line(folder_run, tmp_path, capsys):
    assert predict_main([str(folder_run / "run")]) == 2
    assert predict_main([str(tmp_path / "nothing"), "--folder", str(folder_run / "tree/test")]) == 2
    assert predict_main([str(folder_run / "run"), "--folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: give image files, or --folder DIR",
        f"error: {tmp_path / 'nothing'}: no model.safetensors with its model.json there",
        f"error: --folder: no image in {tmp_path} (.bmp, .gif, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)",
    ]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "hub"])
def test_an_export_is_verified_against_pytorch(folder_run, tmp_path, capsys, fmt):
    out = tmp_path / fmt
    assert export_main([str(folder_run / "run"), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    difference = json.loads((out / "export.json").read_text())["max_abs_logit_difference"]
    assert printed.endswith(f"(largest logit difference to PyTorch on 16 test images: {difference:.2e})")
    assert difference < 1e-4


def test_an_export_replaces_an_earlier_export_but_never_a_folder_of_yours(folder_run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert export_main([str(folder_run / "run"), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out: {out} exists and is not an hw3 export; give a new or empty folder\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    again = tmp_path / "again"
    for _ in range(2):  # the second export replaces the first
        assert export_main([str(folder_run / "run"), "--format", "torchscript", "--out", str(again)]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["export.json", "model.pt"]


def test_the_hub_folder_loads_with_timm_alone(folder_run, tmp_path):
    """What `timm.create_model("hf-hub:USER/NAME", pretrained=True)` does after downloading the folder, done on
    the folder itself (timm's local-dir source, and pretrained_cfg_overlay with the weights file)."""
    import timm

    import hw3

    out = tmp_path / "hub"
    assert export_main([str(folder_run / "run"), "--format", "hub", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "simple_cnn" and config["label_names"] == ["cat", "dog"]
    assert config["pretrained_cfg"]["input_size"] == [3, 24, 24]
    readme = (out / "README.md").read_text()
    assert "## Metrics" in readme and "- test_acc: " in readme and "python train.py --recipe" in readme
    reference = hw3.load_model(str(folder_run / "run"))
    by_path = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_file = timm.create_model(
        "simple_cnn", pretrained=True, num_classes=2, in_chans=3, img_size=24,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=2),
    ).eval()  # fmt: skip
    x = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(by_path(x), reference(x)) and torch.equal(by_file(x), reference(x))


def test_a_model_with_the_small_input_stem_is_not_exported_for_timm_alone(tmp_path, capsys):
    from hw3.cli.train import main

    args = [
        "--recipe",
        QUICK,
        "model.name=test_resnet",
        "train.epochs=1",
        "log.trackers=[]",
        f"output_dir={tmp_path / 'r'}",
    ]
    assert main([str(a) for a in args]) == 0
    capsys.readouterr()
    assert export_main([str(tmp_path / "r"), "--format", "hub"]) == 2
    assert "hw3's small-input stem, which timm alone cannot rebuild" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "r")


def test_the_model_card_says_the_command_as_launched_and_its_snippet_runs_as_written(tmp_path):
    """A run launched with `accelerate launch`: its Hub model card gives that command, and its Python snippet (the
    Hub repo swapped for the exported folder) loads the model in a fresh interpreter, simple_cnn included."""
    import re
    import shlex
    import subprocess
    import sys

    from helpers import ROOT, accelerate_bin, child_env, run_command

    config = ROOT / "accelerate_configs" / "cpu.yaml"
    args = ["--recipe", QUICK, "train.epochs=1", "log.trackers=[]", f"output_dir={tmp_path / 'run'}"]
    launched = run_command([accelerate_bin(), "launch", "--config_file", config, ROOT / "train.py", *args], tmp_path)
    assert launched.code == 0, launched.err[-3000:]
    assert export_main([str(tmp_path / "run"), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    readme = (tmp_path / "hub" / "README.md").read_text()
    commands = re.search(r"```bash\n(.*?)\n```", readme, re.S).group(1).splitlines()
    typed = ["accelerate", "launch", "--config_file", config, ROOT / "train.py", *args]
    assert commands == [shlex.join(map(str, typed))], commands
    snippet = re.search(r"```python\n(.*?)\n```", readme, re.S).group(1)
    snippet = snippet.replace("hf-hub:USER/NAME", f"local-dir:{tmp_path / 'hub'}")
    check = f"{snippet}\nimport torch\nprint(tuple(model(torch.zeros(1, 1, 8, 8)).shape))"
    done = subprocess.run([sys.executable, "-c", check], env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "(1, 10)", done.stderr[-3000:]
