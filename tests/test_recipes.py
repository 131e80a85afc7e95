"""Every shipped recipe runs in smoke mode (synthetic data of its shape, random weights, 2 steps) on the CPU."""

import pytest

from helpers import RECIPES, read_metrics, read_summary


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipe_smoke_runs(train, tmp_path, recipe):
    result = train("--recipe", RECIPES / recipe, "smoke=true", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 1 and rows[0]["train_loss"] == rows[0]["train_loss"]
    summary = read_summary(tmp_path / "run")
    assert summary["optimizer_steps"] == 2 and summary["epochs_completed"] == 1 and summary["stopped_reason"] is None


def test_smoke_run_keeps_the_recipes_shape(train, tmp_path):
    result = train(
        "--recipe", RECIPES / "cifar100_resnet50_pretrained.yaml", "smoke=true", f"output_dir={tmp_path / 'run'}"
    )
    assert result.code == 0, result.err
    assert "100 classes\ninput: 224px x3 (data.image_size)" in result.out and "resnet50.tv2_in1k" in result.out
