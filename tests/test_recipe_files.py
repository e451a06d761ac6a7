"""Recipe files: `recipes --show` writes one, `run --recipe FILE` / `sweep --recipes` read it, checked
by the built-in recipes' schema; a run keeps the whole recipe, so `--resume` never needs the file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tlbench.config import RECIPES, get_recipe
from tlbench.errors import ConfigError, UsageError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_show_prints_a_file_that_reads_back_to_the_same_recipe(cli, tmp_path: Path, name: str) -> None:
    code, out, err = cli("recipes", "--show", name)
    assert code == 0, err
    assert out.startswith("# tlbench recipe") and f"name: {name}" in out
    assert get_recipe(str(_write(tmp_path / "copy.yaml", out))) == RECIPES[name]
    code, out, _ = cli("recipes", "--show", name, "--json")
    assert code == 0 and json.loads(out) == json.loads(json.dumps(asdict(RECIPES[name])))  # search: a list


def test_a_partial_file_takes_the_defaults_and_its_stem_as_name(cli, tmp_path: Path) -> None:
    path = _write(tmp_path / "short-sgd.yml", "optimizer: sgd\nlr: 1e-3\nepochs: 5.0\nfreeze: 11\n")
    recipe = get_recipe(str(path))
    assert recipe.name == "short-sgd" and str(path.absolute()) in recipe.summary
    assert recipe.lr == 1e-3 and isinstance(recipe.lr, float)  # YAML 1.2 numbers, not the string "1e-3"
    assert recipe.epochs == 5 and isinstance(recipe.epochs, int) and recipe.freeze == "11"
    assert recipe.batch_size == 32 and recipe.momentum == 0.9  # Recipe's defaults
    code, out, _ = cli("recipes", "--show", path)  # --show reads files too: the checked, complete form
    assert code == 0 and "name: short-sgd" in out and "lr: 0.001" in out


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("optimizer: sgd\nlrr: 0.1\nbogus: 1\n", "lrr, bogus", "are not recipe fields"),
        ("optimizer: sgd\nlrr: 0.1\n", "lrr", "did you mean lr?"),
        ("lr: 0.1\n", "optimizer", "is missing"),
        ("optimizer: adam\n", "optimizer", "'adam' is not one of sgd, adamw"),
        ("optimizer: sgd\nlr: -1\n", "lr", "-1 must be in (0, 10]"),
        ("optimizer: sgd\nepochs: 10.5\n", "epochs", "10.5 is not an integer"),
        ("optimizer: sgd\nbatch_size: true\n", "batch_size", "True is not an integer"),
        ("optimizer: sgd\nnesterov: 1\n", "nesterov", "1 is not true or false"),
        ("optimizer: sgd\ndropout:\n", "dropout", "has no value"),
        ("optimizer: sgd\nname: a/b\n", "name", "may hold only letters"),
    ],
)
def test_a_bad_file_names_the_field_and_the_file(
    cli, tmp_path: Path, text: str, field: str, words: str
) -> None:
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as exc:
        get_recipe(str(path))
    assert exc.value.field == field
    message = exc.value.one_line()
    assert message.startswith(f"recipe file {path}: {field}") and words in message
    # the CLI prints that line as it is (the value came from the file, not from a flag such as --lr)
    code, _, err = cli("run", "test_resnet", "--recipe", path, "--data", "synthetic", "--out", tmp_path / "r")
    assert code == 2 and err.strip() == f"tlbench: error: {message}"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("missing.yaml", None, "recipe file {path} not found"),
        ("list.yaml", "- optimizer: sgd\n", "must hold a mapping of recipe fields, not list"),
        ("broken.yaml", "optimizer: [sgd\n", "is not valid YAML"),
        ("no-such-recipe", None, "unknown recipe 'no-such-recipe'"),
    ],
)
def test_unreadable_files_and_unknown_names(
    cli, tmp_path: Path, name: str, text: str | None, words: str
) -> None:
    path = tmp_path / name if name.endswith(".yaml") else Path(name)
    if text is not None:
        _write(path, text)
    with pytest.raises(UsageError) as exc:
        get_recipe(str(path))
    assert words.format(path=path) in exc.value.one_line()
    code, _, err = cli("recipes", "--show", path)
    assert code == 2 and words.format(path=path) in err and "Traceback" not in err


def test_an_existing_file_without_a_yaml_suffix_is_a_recipe_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "my-recipe", "optimizer: adamw\nlr: 5e-4\n")
    assert get_recipe(str(path)).name == "my-recipe"


def test_a_run_records_the_whole_recipe_so_resume_never_reads_the_file(tmp_path: Path) -> None:
    from tlbench.train.api import RunConfig, run_config

    path = _write(tmp_path / "mine.yaml", "optimizer: sgd\nlr: 3e-3\nschedule: cosine\nfreeze: '50%'\n")
    cfg = run_config("test_resnet", str(path), data="synthetic", epochs=2, out=tmp_path / "run")
    assert cfg.recipe.name == "mine" and cfg.freeze == "50%" and cfg.recipe.epochs == 2  # override
    saved = json.loads(json.dumps(cfg.to_dict()))  # what config.json holds
    assert saved["recipe"]["lr"] == 3e-3 and saved["recipe"]["schedule"] == "cosine"
    path.unlink()
    assert RunConfig.from_dict(saved) == cfg


def test_a_sweep_takes_named_recipes_and_recipe_files_together(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write(Path("fast.yaml"), "optimizer: sgd\nlr: 1e-2\nfreeze: all\n")
    code, _, err = cli(
        "sweep",
        "--backbones",
        "test_resnet",
        "--recipes",
        f"keras-vgg19,{path}",
        "--freeze",
        "all",
        "--no-baseline",
        "--dry-run",
        "--out",
        tmp_path / "s",
        "--data",
        "synthetic",
    )
    assert code == 0, err
    assert "2 cell(s)" in err and "fast.yaml" in err and "will not run" not in err
    bad = _write(Path("bad.yaml"), "optimizer: sgd\nlr: 0\n")
    code, _, err = cli("sweep", "--backbones", "test_resnet", "--recipes", f"keras-vgg19,{bad}", "--dry-run")
    assert code == 2 and f"recipe file {bad}: lr 0 must be in (0, 10]" in err


_ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
"""The 'billion laughs' document: 9**9 strings from a few hundred bytes, were aliases expanded."""


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"optimizer: sgd\nsummary: *i\n{_ALIAS_BOMB}", "anchors and aliases (&name, *name) are not allowed"),
        ("optimizer: &o sgd\nlr: 1e-3\n", "anchors and aliases (&name, *name) are not allowed"),
        ("optimizer: sgd\nhidden: 100000000000\n", "hidden 1e+11 must be in [1, 65536]"),
        ('optimizer: sgd\nname: "evil\\n"\n', "name 'evil\\n' may hold only letters"),
        (f"optimizer: sgd\nname: {'n' * 65}\n", "may hold only letters, digits and ._- (at most 64)"),
        (f"optimizer: sgd\nsummary: {'s' * 1001}\n", "summary is longer than 1000 characters"),
        (f"optimizer: [{', '.join(['x' * 50] * 100)}]\n", "optimizer ['xxxxxxxx"),
        (f"optimizer: sgd\n# {'#' * 70000}\n", "is over 64 KiB"),
    ],
)
def test_a_hostile_file_is_one_short_line_before_anything_is_built(
    cli, tmp_path: Path, text: str, words: str
) -> None:
    """Aliases are refused while parsing (the bomb never expands: the test would run out of memory),
    numbers and names keep to what a real recipe needs, and the error line stays short."""
    path = _write(tmp_path / "hostile.yaml", text)
    for args in (
        ("recipes", "--show", path),
        ("run", "test_resnet", "--recipe", path, "--out", tmp_path / "r"),
    ):
        code, out, err = cli(*args)
        assert code == 2 and out == "" and "Traceback" not in err
        assert err.startswith(f"tlbench: error: recipe file {path}") and words in err, err
        assert err.count("\n") == 1 and len(err) < 400
    assert not (tmp_path / "r").exists()


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(cli, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opened for reading the usual way, this blocks until something writes to it
    code, _, err = cli("recipes", "--show", fifo)
    assert (
        code == 2
        and err == f"tlbench: error: recipe file {fifo} is a named pipe. give a regular .yaml file\n"
    )
    code, _, err = cli("recipes", "--show", tmp_path)  # a folder named as the recipe
    assert code == 2 and "Traceback" not in err
