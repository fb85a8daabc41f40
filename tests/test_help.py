"""Every script's --help: the README sends people there first, so it must print, with every flag's default."""

import argparse
import importlib

import pytest
from helpers import run

SCRIPTS = ["train", "inference", "bench", "acceptance"]


def parser_of(script: str) -> argparse.ArgumentParser:
    return importlib.import_module(script).build_parser()


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_formatted(script: str) -> None:
    """argparse formats help lazily: a stray "%" in one flag's text ("80% in") is a TypeError only here."""
    text = parser_of(script).format_help()
    assert text.startswith("usage: ")
    for action in parser_of(script)._actions:
        if action.help == argparse.SUPPRESS:  # internal flags (bench.py's parent passes --stats to a child)
            continue
        for option in action.option_strings:
            assert option in text, option


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_the_defaults(script: str) -> None:
    """ArgumentDefaultsHelpFormatter: every flag with a default and a help text says its default."""
    parser = parser_of(script)
    text = parser.format_help()
    shown = [a for a in parser._actions if a.help and a.default not in (None, False, argparse.SUPPRESS)]
    assert shown, script
    assert text.count("(default:") >= len(shown), [a.dest for a in shown if f"{a.dest}" not in text]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_as_a_user_would(script: str, tmp_path) -> None:
    result = run(f"{script}.py", "--help", cwd=tmp_path)
    assert result.stdout.startswith(f"usage: {script}.py"), result.stdout[:200]
    assert not result.stderr.strip(), result.stderr
    assert not list(tmp_path.iterdir()), "--help wrote files"
