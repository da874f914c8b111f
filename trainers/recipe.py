"""Recipes: named training configurations as TOML files in ``trainers/recipes/``.

A recipe holds values of the train command's flags, ``_`` for ``-`` (``dataset = "cifar10"``,
``lr = 0.1``, ``probe_every = 10``, ...) and may have a ``[paper]`` table (where the paper
reports that cell; its number is in lawn_monitor/paper.py; never read by training). Its ``[why]``
table gives, for every setting, ``"paper"`` where it is the paper's stated one, else the reason
for the value (``recipe_why``; tests check that every setting has one).
``lawn-monitor train --recipe cifar10-adam-lawn-b256`` starts from it; flags given on the command
line override it. ``lawn-monitor sweep --recipes 'cifar10-*'`` runs every match (``fnmatch``).

A recipe is named (letters, digits, ``_ . -``) and read from ``trainers/recipes/`` only: a name
never reaches outside that folder (``--recipe ../x`` is refused). A value with a ``/`` or ending
in ``.toml`` is a path instead, to a recipe file of your own: it must be an existing ``.toml`` file.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

from .config import FLAGS, ConfigError, TrainConfig, config_from_flags

RECIPE_DIR = Path(__file__).with_name("recipes")
# Fields a recipe may not set: they belong to one invocation, not to a configuration.
NOT_IN_RECIPES = {"recipe", "resume", "root", "name", "progress"}
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def match_recipes(pattern: str) -> list[str]:
    """The recipe names matching a shell pattern (``cifar10-*``), sorted; ConfigError if none."""
    names = [n for n in recipe_names() if fnmatch.fnmatchcase(n, pattern)]
    if not names:
        raise ConfigError(
            f"no recipe matches {pattern!r} in {RECIPE_DIR}: try one of "
            f"{', '.join(sorted({n.split('-')[0] + '-*' for n in recipe_names()}))}"
        )
    return names


def _type_ok(value: Any, base: str) -> bool:
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def recipe_path(recipe: str) -> Path:
    """The file a ``--recipe`` value stands for (see the module docstring); ConfigError if none."""
    if "/" in recipe or "\\" in recipe or recipe.endswith(".toml"):
        path = Path(recipe).expanduser()
        if path.suffix != ".toml" or not path.is_file():
            raise ConfigError(
                f"--recipe {recipe}: not an existing .toml file; a recipe is a name from {RECIPE_DIR} "
                f"(`ls trainers/recipes`) or the path of a .toml file of your own"
            )
        return path
    path = RECIPE_DIR / f"{recipe}.toml"
    if not NAME_RE.match(recipe) or ".." in recipe or not path.is_file():
        near = [n for n in recipe_names() if n.split("-")[0] == recipe.split("-")[0]][:6]
        raise ConfigError(
            f"no recipe {recipe!r} in {RECIPE_DIR}"
            + (f": similar ones are {', '.join(near)}" if near else "; `ls trainers/recipes` lists them")
        )
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from exc


def load_recipe(name: str) -> dict[str, Any]:
    """A recipe's flag values by name, checked for names, types and choices (ConfigError). ``name``
    is a recipe's name or the path of a .toml file (``recipe_path``)."""
    path = recipe_path(name)
    raw = _read(path)
    values = {}
    for key, value in raw.items():
        if key in ("paper", "why", "cluster"):  # [cluster]: what a launcher gives each run (trainers/launch)
            continue
        if key not in FLAGS or key in NOT_IN_RECIPES:
            raise ConfigError(
                f"recipe {path}: unknown or not allowed key {key!r} (keys are the train command's "
                f"flags, with _ for -, except {', '.join(sorted(NOT_IN_RECIPES))})"
            )
        flag = FLAGS[key]
        if flag.parse is not None and isinstance(value, str):  # a word the flag takes (free_epochs = "auto")
            try:
                value = flag.parse(value)
            except ValueError:
                raise ConfigError(
                    f"recipe {path}: {key} = {value!r} is not a value --{key.replace('_', '-')} takes"
                ) from None
        if isinstance(value, str) and flag.parse is not None:
            values[key] = value
            continue
        if not _type_ok(value, flag.type):
            raise ConfigError(f"recipe {path}: {key} = {value!r} should be {flag.type}")
        if flag.choices and value not in flag.choices:
            raise ConfigError(f"recipe {path}: {key} = {value!r} is not one of {', '.join(flag.choices)}")
        values[key] = float(value) if flag.type == "float" else value
    return values


def recipe_why(name: str) -> dict[str, str]:
    """The recipe's ``[why]`` table: for each of its settings, ``"paper"`` (``"paper: ..."``) where
    it is the paper's stated setting, else the reason for the value (ours, or a deviation)."""
    return dict(_read(recipe_path(name)).get("why", {}))


def paper_value(name: str) -> dict[str, Any]:
    """The recipe's ``[paper]`` table (which of the paper's tables reports the cell), or {}."""
    return dict(_read(recipe_path(name)).get("paper", {}))


def config_from(given: dict[str, Any], recipe: str | None = None) -> TrainConfig:
    """A TrainConfig from a recipe (if any) with ``given`` (flags typed by the user) on top."""
    base = load_recipe(recipe) if recipe else {}
    return config_from_flags({**base, **given, "recipe": recipe})
