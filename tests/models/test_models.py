"""hw3.models: timm models with the small-input stem, pretrained weights from a local file, hw3's tiny models,
and the one-line loader."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from hw3 import load_model
from hw3.config import ModelConfig
from hw3.errors import UserError
from hw3.models.build import build_model, pretrained_data_config
from hw3.runs.checkpoints import list_checkpoints

from helpers import RECIPES, read_summary

QUICK = RECIPES / "quickstart.yaml"


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnest14d", "resnest26d"])
def test_small_input_stem_keeps_cifar_resolution(name):
    small = build_model(ModelConfig(name=name), 100, 3, 32)
    plain = build_model(ModelConfig(name=name, small_input=False), 100, 3, 32)
    x = torch.zeros(2, 3, 32, 32)
    assert small.forward_features(x).shape[-1] == 4 and plain.forward_features(x).shape[-1] == 1
    assert small(x).shape == (2, 100)
    assert isinstance(small.maxpool, torch.nn.Identity)
    first = small.get_submodule(small.pretrained_cfg["first_conv"])
    assert first.stride == (1, 1) and first.kernel_size == (3, 3)


def test_small_input_is_off_for_large_images_and_pretrained_models(tmp_path):
    assert not build_model(ModelConfig(name="resnet18"), 10, 3, 224).hw3_small_input
    file = tmp_path / "w.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(file))
    assert not build_model(ModelConfig(name="resnet18", pretrained_file=str(file)), 10, 3, 32).hw3_small_input
    with pytest.raises(UserError, match="model.small_input: only the resnet/resnest families"):
        build_model(ModelConfig(name="simple_mlp", small_input=True), 10, 1, 28)


def test_pretrained_file_loads_weights_with_a_new_head(tmp_path):
    source = timm.create_model("resnet18")  # 1000 ImageNet classes, as timm saves it
    file = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(file))
    model = build_model(ModelConfig(name="resnet18", pretrained_file=str(file)), 37, 3, 224)
    mine, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if not k.startswith("fc."))
    assert model.fc.weight.shape == (37, 512)
    cfg = pretrained_data_config(ModelConfig(name="resnet18", pretrained_file=str(file)))
    assert cfg["input_size"] == (3, 224, 224) and tuple(cfg["mean"]) == (0.485, 0.456, 0.406)


def test_pretrained_file_problems_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="model.pretrained_file: .*does not exist"):
        build_model(ModelConfig(name="resnet18", pretrained_file=str(tmp_path / "nope.pth")), 10, 3, 32)
    other = tmp_path / "resnet50.safetensors"
    save_file(timm.create_model("resnet50").state_dict(), str(other))
    with pytest.raises(UserError, match="resnet50.safetensors holds weights of another architecture than resnet18"):
        build_model(ModelConfig(name="resnet18", pretrained_file=str(other)), 10, 3, 32)


def test_pretrained_from_the_hub_offline_points_at_pretrained_file():
    with pytest.raises(UserError, match="not in the local cache .*set model.pretrained_file to a weights file"):
        build_model(ModelConfig(name="resnet18", pretrained=True), 10, 3, 32)


def test_pretrained_file_through_the_cli_uses_the_models_normalization(train, tmp_path):
    file = tmp_path / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(file))
    result = train(
        "--recipe",
        QUICK,
        "model.name=test_resnet",
        f"model.pretrained_file={file}",
        "data.image_size=32",
        "train.epochs=1",
        "train.batch_size=16",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 0, result.err
    card = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    timm_cfg = timm.models.get_pretrained_cfg("test_resnet")
    assert card["in_chans"] == 3 and card["mean"] == list(timm_cfg.mean) and card["small_input"] is False
    assert read_summary(tmp_path / "run")["pretrained"] is True


def test_simple_mlp_takes_its_input_size_from_the_data_and_its_layers_from_the_recipe():
    model = build_model(ModelConfig(name="simple_mlp", kwargs={"hidden_sizes": [64, 32]}, drop_rate=0.2), 10, 3, 16)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 64), (64, 32), (32, 10)]
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(UserError, match="model.kwargs"):
        build_model(ModelConfig(name="resnet18", kwargs={"hidden_sizes": [3]}), 10, 3, 32)


def test_load_model_round_trips_predictions(train, tmp_path):
    result = train("--recipe", QUICK, "train.epochs=2", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    model = load_model(str(tmp_path / "run"))
    same = load_model(str(tmp_path / "run" / "best" / "model.safetensors"))
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), same(x)) and model.hw3_card["classes"] == [str(i) for i in range(10)]
    # The same weights through timm alone (the classifier is kept when the overlay gives its class count).
    file = str(tmp_path / "run" / "best" / "model.safetensors")
    timm_model = timm.create_model(
        "simple_cnn",
        in_chans=1,
        num_classes=10,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=file, num_classes=10),
    )
    assert torch.equal(timm_model.eval()(x), model(x))


def test_channels_last_option_trains(train, tmp_path):
    result = train(
        "--recipe",
        QUICK,
        "model.name=test_resnet",
        "data.image_size=16",
        "train.channels_last=true",
        "train.epochs=1",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 0, result.err


@pytest.mark.slow
def test_compiled_training_with_cuda_graph_mode_sam_and_ema_exports_plain_weights(train, tmp_path):
    """train.compile=reduce-overhead (CUDA graphs on a GPU; plain inductor on this CPU) with SAM and an EMA: full
    batches only (1,294 digits at 64: 20 steps, the last 14 images dropped), compile time reported once, and
    weights that timm and hw3 load without torch.compile's `_orig_mod.` prefixes."""
    run_dir = tmp_path / "run"
    args = ["model.name=simple_mlp", "train.compile=reduce-overhead", "optim.name=sam", "optim.base=adamw"]
    args += ["train.ema_decay=0.9"]
    result = train("--recipe", QUICK, *args, "train.epochs=2", f"output_dir={run_dir}")
    assert result.code == 0, result.err
    assert result.out.count("torch.compile: the first step took") == 1, result.err[-3000:]
    summary = read_summary(run_dir)
    assert summary["optimizer_steps"] == 2 * 20 and summary["test_acc"] > 0.9
    weights = load_file(str(run_dir / "best" / "model.safetensors"))
    ema = load_file(str(list_checkpoints(run_dir)[-1] / "ema.safetensors"))
    assert not [k for k in [*weights, *ema] if k.startswith(("_orig_mod.", "module."))]
    card = json.loads((run_dir / "best" / "model.json").read_text())
    plain = timm.create_model(
        "simple_mlp",
        pretrained=True,
        num_classes=10,
        in_chans=1,
        img_size=8,
        pretrained_cfg_overlay=dict(file=str(run_dir / "best" / "model.safetensors"), num_classes=10),
    )
    assert all(torch.equal(plain.state_dict()[k], weights[k]) for k in weights)
    assert load_model(str(run_dir)).hw3_card == card
