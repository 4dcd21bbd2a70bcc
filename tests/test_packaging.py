"""The wheel must ship every sub-package (setuptools' explicit list is easy to forget)."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_backends_import_their_family_never_a_sibling():
    import re

    offences = []
    for path in sorted((ROOT / "backends").glob("*/*.py")):
        own = path.parent.name
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for other in re.findall(r"editspec\.backends\.(\w+)", line):
                if other != own:
                    offences.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offences == [], "move what two backends share into editspec/families/"
