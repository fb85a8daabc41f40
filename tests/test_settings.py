"""Where every setting comes from (train_settings.resolve_settings), one set of defaults shared by the library
and the command line (TrainSettings, DataConfig), and the one kind of batch source train.py reads."""

from dataclasses import fields
from pathlib import Path

import pytest
import torch

import train
import train_settings
from atomic_files import save_atomically
from data_pipeline import BatchSource, DataConfig, InMemory, load_data
from train_settings import TrainSettings

CPU = torch.device("cpu")


def test_the_data_flags_defaults_are_the_librarys() -> None:
    defaults = vars(train_settings.build_parser().parse_args([]))
    library = DataConfig()
    for field in fields(DataConfig):
        if field.name in defaults and field.name != "image_size":  # image_size: None on the command line
            assert defaults[field.name] == getattr(library, field.name), field.name
    assert library.batch_size == 64 and library.workers >= 1


def test_every_flag_is_a_field_of_the_settings_with_its_default() -> None:
    """The defaults are declared once, in TrainSettings and DataConfig: each flag's is its field's."""
    defaults, settings = vars(train_settings.build_parser().parse_args([])), TrainSettings()
    assert set(defaults) == set(train_settings.flat_settings(settings))  # no flag without a field, nor the reverse
    for field in fields(TrainSettings):
        if field.name != "data":
            assert defaults[field.name] == getattr(settings, field.name), field.name
    assert train_settings.settings_from(train_settings.flat_settings(settings)) == settings


def test_data_settings_are_taken_by_field_name() -> None:
    argv = ["--data-root", "/x", "--batch-size", "5", "--workers", "0", "--lighting", "0.1"]
    config, parsed = (
        train_settings.command_line_settings(argv).data,
        vars(train_settings.build_parser().parse_args(argv)),
    )
    for field in fields(DataConfig):
        if field.name == "normalization":
            assert config.normalization is None  # not a flag: set by --pretrained
        elif field.name == "image_size":
            assert config.image_size == 67  # the built-in shapes' default, worked out by DataConfig
        else:
            assert getattr(config, field.name) == parsed[field.name], field.name
    assert train_settings.command_line_settings(["--pretrained", "imagenet"]).data.normalization is not None


@pytest.mark.parametrize(
    "settings, size", [({}, 67), ({"data": "photos"}, 224), ({"dataset": "cifar10"}, 67), ({"image_size": 99}, 99)]
)
def test_the_input_size_is_worked_out_once_by_dataconfig(settings: dict, size: int) -> None:
    config = DataConfig(**settings)
    assert config.image_size == size and config.resize_size == round(size * 256 / 224)


def test_only_the_flags_given_count_as_given() -> None:
    parser = train_settings.build_parser()
    defaults, given = train_settings.parse_command_line(parser, ["--epochs", "8", "--nesterov", "--recipe", "paper"])
    assert given == {"epochs": 8, "nesterov": True, "recipe": "paper"}  # 8 is the default, but it was given
    assert defaults["epochs"] == 8 and defaults["nesterov"] is False and defaults["recipe"] is None
    assert train_settings.parse_command_line(parser, [])[1] == {}


def test_each_source_wins_over_the_ones_above_it_in_the_table() -> None:
    defaults = vars(train_settings.build_parser().parse_args([]))
    # the recipe over the defaults
    settings = train_settings.resolve_settings(defaults, {"recipe": "paper"})
    assert (settings["batch_size"], settings["model"], settings["epochs"]) == (128, "paper", 90)
    # the resumed run over the recipe; the command line over the resumed run; NOT_RESUMED stay this run's
    resumed = {**settings, "epochs": 5, "lr": 0.5, "workers": 7, "device": "cuda", "gone_flag": 1}
    settings = train_settings.resolve_settings(defaults, {"recipe": "paper", "lr": 0.1}, resumed)
    assert (settings["epochs"], settings["lr"], settings["batch_size"]) == (5, 0.1, 128)
    assert settings["workers"] == defaults["workers"] and settings["device"] == "auto" and "gone_flag" not in settings
    # where the data is comes back too: `--resume` alone continues a `--dataset imagenet --data-root DIR` run
    settings = train_settings.resolve_settings(
        defaults, {}, {**resumed, "dataset": "imagenet", "data_root": "/imagenet"}
    )
    assert (settings["dataset"], settings["data_root"]) == ("imagenet", "/imagenet")
    # and where its pack and decode cache are: a resumed ImageNet run does not pack or decode it all again
    kept = {"loader": "packed", "pack_dir": "/nvme/packs", "pack_format": "jpeg", "cache_dir": "/nvme/cache"}
    assert {key: train_settings.resolve_settings(defaults, {}, {**resumed, **kept})[key] for key in kept} == kept
    # --evaluate's checkpoint over the command line, for the model's input
    settings = train_settings.resolve_settings(
        defaults, {"image_size": 224}, None, {"image_size": 99, "in_channels": 1}
    )
    assert (settings["image_size"], settings["in_channels"]) == (99, 1)


def last_pt(tmp_path: Path, **args) -> Path:
    """A last.pt holding the settings of a run (the rest of a checkpoint: a tiny real model)."""
    from alexnet import AlexNet

    model = AlexNet(2)
    settings = {**vars(train_settings.build_parser().parse_args([])), **args}
    state = {
        "model": model.state_dict(),
        "model_config": model.config,
        "classes": ["a", "b"],
        "preprocess": {"image_size": 67, "resize_size": 67, "mean": [0.5] * 3, "std": [0.2] * 3, "in_channels": 3},
        "optimizer": {},
        "args": settings,
    }
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    save_atomically(state, path)
    return path


def test_a_resumed_runs_settings_are_known_before_the_device_is_set_up(tmp_path: Path) -> None:
    # make_setup reads --deterministic and --amp: they must come back from the checkpoint before main calls it.
    path = last_pt(tmp_path, deterministic=True, amp="off", epochs=3, lr=0.03)
    args, resume, evaluated = train_settings.get_settings(["--resume", str(path.parent), "--epochs", "4"])
    assert (args.deterministic, args.amp, args.epochs, args.lr) == (True, "off", 4, 0.03)
    assert resume["classes"] == ["a", "b"] and evaluated is None
    assert args.resume == str(path.parent) and args.device == CPU


def test_an_evaluated_checkpoint_brings_its_input_size(tmp_path: Path) -> None:
    path = last_pt(tmp_path)
    args, resume, evaluated = train_settings.get_settings(["--evaluate", str(path), "--image-size", "224"])
    assert args.data.image_size == 67 and resume is None and evaluated["classes"] == ["a", "b"]


def test_every_batch_source_shares_one_base(tmp_path: Path) -> None:
    data = load_data(DataConfig(train_size=20, val_size=10, batch_size=8, workers=0), CPU)
    for source in (data.train, data.val):
        assert isinstance(source, BatchSource) and source.kind == "in memory" and source.random_access
    assert data.train.num_batches() == 2 and data.val.num_batches() == 2  # training drops the short batch
    sharded = InMemory(data.train.images, data.train.labels, 4, True, CPU, rank=1, world_size=2)
    assert sharded.num_batches() == 2 and len(torch.cat([b[1] for b in sharded.batches(seed=3)])) == 8
    with pytest.raises(NotImplementedError, match="no random access"):
        BatchSource(4, False, CPU).take([0])


def test_main_sets_the_device_up_with_the_resumed_runs_settings(tmp_path: Path, monkeypatch) -> None:
    path = last_pt(tmp_path, deterministic=True, amp="bf16")
    seen = {}

    def make_setup(args):  # stands in for train.make_setup: records what it was given, then stops main
        seen.update(deterministic=args.deterministic, amp=args.amp)
        raise SystemExit(0)

    monkeypatch.setattr(train, "make_setup", make_setup)
    with pytest.raises(SystemExit):
        train.main(["--resume", str(path)])
    assert seen == {"deterministic": True, "amp": "bf16"}
