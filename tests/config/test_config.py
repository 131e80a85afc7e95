"""hw3.config: strict loading, coercion by field type, overrides, validation, every shipped recipe."""

import dataclasses

import pytest
import yaml

from hw3.config import Config, all_keys, flatten, load_config, parse_yaml, to_yaml
from hw3.config.recipe import build_section
from hw3.engine.recipe import load_recipe
from hw3.errors import UserError

from helpers import RECIPES


def test_defaults_round_trip_through_yaml():
    cfg = Config()
    again = build_section(Config, yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("optim.lr=1e-3", "optim.lr", 0.001),  # YAML 1.1 reads 1e-3 as a string; the float field makes it a float
        ("optim.lr=5", "optim.lr", 5.0),
        ("train.epochs=3", "train.epochs", 3),
        ("train.epochs=010", "train.epochs", 10),  # not octal
        ("model.pretrained=true", "model.pretrained", True),
        ("model.pretrained_file=null", "model.pretrained_file", None),
        ("train.mixed_precision=no", "train.mixed_precision", "no"),  # not False
        ("log.trackers=[tensorboard, wandb]", "log.trackers", ["tensorboard", "wandb"]),
        ("log.trackers=tensorboard", "log.trackers", ["tensorboard"]),
        ("log.trackers=[]", "log.trackers", []),
        ("train.batch_size_schedule={0: 16, 2: 64}", "train.batch_size_schedule", {0: 16, 2: 64}),
        ("model.kwargs.hidden_sizes=[64, 32]", "model.kwargs", {"hidden_sizes": [64, 32]}),
        ("data.mean=[0.5]", "data.mean", [0.5]),
        ("seed=7", "seed", 7),
    ],
)
def test_override_values_are_coerced_to_the_field_type(override, key, expected):
    cfg = load_config(None, [override])
    section, _, name = key.rpartition(".")
    value = getattr(getattr(cfg, section), name) if section else getattr(cfg, name)
    assert value == expected and type(value) is type(expected)


def test_recipe_values_are_coerced_and_later_overrides_win(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5e-4\ntrain:\n  mixed_precision: no\n  epochs: 4\n")
    cfg = load_config(str(recipe), ["train.epochs=2"])
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 0.0005
    assert cfg.train.mixed_precision == "no" and cfg.train.epochs == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("train.lr=0.1", "unknown key 'train.lr' (did you mean 'optim.lr'?)"),
        ("optimizer.lr=0.1", "unknown key 'optimizer"),
        ("optim.lr=abc", "optim.lr: expected a number, got 'abc'"),
        ("train.epochs=1.5", "train.epochs: expected an integer, got 1.5"),
        ("model.pretrained=maybe", "model.pretrained: expected true or false, got 'maybe'"),
        ("train.batch_size_schedule=[1, 2]", "train.batch_size_schedule: expected a mapping"),
        ("optim.lr=-0.1", "optim.lr: must be >= 0"),
        ("train.epochs=0", "train.epochs: must be >= 1"),
        ("train.batch_size=0", "train.batch_size: must be >= 1"),
        ("data.val_fraction=1.5", "data.val_fraction: must be in (0, 1)"),
        ("data.name=cifar1000", "data.name: unknown dataset 'cifar1000' (did you mean 'cifar100'?)"),
        ("optim.name=adamm", "optim.name: unknown optimizer 'adamm' (did you mean 'adam'?)"),
        ("sched.name=cosin", "sched.name: unknown schedule 'cosin' (did you mean 'cosine'?)"),
        ("model.name=resnet81", "model.name: unknown model 'resnet81' (did you mean 'resnet18'?)"),
        ("train.mixed_precision=fp8", "train.mixed_precision: 'fp8' is not one of no, fp16, bf16"),
        ("optim.name=sam", None),  # valid on its own ...
        ("lr", "override 'lr' has no '='"),
    ],
)
def test_user_errors_name_the_key(override, message):
    if message is None:
        load_recipe(None, [override])
        return
    with pytest.raises(UserError) as e:
        load_recipe(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_sam_with_gradient_accumulation_is_refused():
    with pytest.raises(UserError, match="SAM needs the full-batch gradient"):
        load_recipe(None, ["optim.name=sam", "train.grad_accum_steps=2"])


def test_malformed_yaml_reports_the_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data:\n  name: digits\noptim:\n  lr: [0.1\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: malformed YAML"):
        load_config(str(recipe))
    recipe.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UserError, match=r"bad.yaml:3: malformed YAML: duplicate key 'lr' \(first on line 2\)"):
        load_config(str(recipe))


def test_recipe_must_be_a_mapping_and_exist(tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- data\n- model\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_config(str(recipe))
    with pytest.raises(UserError, match="recipe file .*nope.yaml' not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_flatten_gives_only_scalars_for_trackers():
    flat = flatten(Config())
    assert set(flat) == set(all_keys())
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["optim.lr"] == 1e-3 and flat["data.image_size"] == "None"


def test_smoke_mode_shrinks_the_run_but_keeps_the_recipe():
    cfg = load_config(str(RECIPES / "quickstart.yaml"), ["smoke=true"])
    assert cfg.smoke and cfg.train.epochs == 1 and cfg.log.trackers == [] and cfg.train.max_steps is None
    assert cfg.data.max_train_samples == 2 * cfg.train.batch_size  # one epoch of 2 steps
    assert cfg.model.name == load_config(str(RECIPES / "quickstart.yaml")).model.name


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_loads_validates_and_documents_itself(recipe):
    path = RECIPES / recipe
    cfg = load_recipe(str(path))
    assert isinstance(cfg, Config)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert len(header) >= 3, f"{recipe}: open with comments: purpose, expected result and hardware, the command"
    assert any(f"--recipe recipes/{recipe}" in line for line in header), f"{recipe}: give the exact command"
    assert parse_yaml(path.read_text(), recipe) is not None


def test_dataclass_fields_each_have_a_comment():
    import inspect

    import hw3.config.schema as module

    source = inspect.getsource(module)
    for section in dataclasses.fields(Config):
        cls = section.type if dataclasses.is_dataclass(section.type) else None
        if isinstance(section.type, str):
            cls = getattr(module, section.type, None)
        if cls is None:
            continue
        for f in dataclasses.fields(cls):
            line = next(line for line in source.splitlines() if line.strip().startswith(f"{f.name}:"))
            assert "#" in line, f"{cls.__name__}.{f.name} has no comment"
