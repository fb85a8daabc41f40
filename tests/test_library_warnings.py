"""Warnings that the libraries we call print about their own code never reach a user's terminal, and
never fail a command or a test; any other warning still does."""

import warnings
from pathlib import Path

import pytest
from helpers import CHECKPOINT_CLASSES, CHECKPOINT_PRESET, needs_pt2_archive

import export
from alexnet import AlexNet
from errors import ExportError

# What torch 2.11's torch.export printed on every export (seen on the GPU machine's stack).
TORCH_2_11 = (
    "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`"
)


def exporting_with_a_warning(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    real = export.write_pt2

    def write_pt2(*args) -> None:
        warnings.warn(message, FutureWarning, stacklevel=1)
        real(*args)

    monkeypatch.setattr(export, "write_pt2", write_pt2)


@needs_pt2_archive
def test_the_exporters_own_warning_is_kept_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exporting_with_a_warning(monkeypatch, TORCH_2_11)
    meta = {"classes": CHECKPOINT_CLASSES, "preprocess": CHECKPOINT_PRESET}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as a test run with -W error would, or a user who turned warnings on
        report = export.export_model(AlexNet(len(CHECKPOINT_CLASSES)).eval(), meta, tmp_path / "m.pt2")
    assert report.path.is_file()


@needs_pt2_archive
def test_any_other_warning_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exporting_with_a_warning(monkeypatch, "something the user should see")
    meta = {"classes": CHECKPOINT_CLASSES, "preprocess": CHECKPOINT_PRESET}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ExportError, match="something the user should see"):
            export.export_model(AlexNet(len(CHECKPOINT_CLASSES)).eval(), meta, tmp_path / "m.pt2")
    assert not (tmp_path / "m.pt2").exists()


# What matplotlib 3.7 (the floor's) printed with pyparsing 3.3, on import and on its first text drawn.
PYPARSING_3_3 = "'parseString' deprecated - use 'parse_string'"


@pytest.mark.parametrize("message, quiet", [(PYPARSING_3_3, True), ("something the user should see", False)])
def test_matplotlibs_own_warning_is_kept_quiet_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str, quiet: bool
) -> None:
    import plots

    figure = plots.new_figure((1.0, 1.0))
    real = type(figure).savefig

    def savefig(self, *args, **kwargs) -> None:
        warnings.warn(message, UserWarning, stacklevel=1)  # pyparsing's is a UserWarning and a DeprecationWarning
        real(self, *args, **kwargs)

    monkeypatch.setattr(type(figure), "savefig", savefig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if quiet:
            plots.save(figure, tmp_path / "a.png")
            assert (tmp_path / "a.png").is_file()
        else:
            with pytest.raises(UserWarning, match=message):
                plots.save(figure, tmp_path / "a.png")
