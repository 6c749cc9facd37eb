"""The README stays true of the code: its commands exist and every setting is documented."""

from __future__ import annotations

import re

from shared.settings import Settings
from tests.environment import ROOT

README = (ROOT / "README.md").read_text()


def _aliases() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names.update(str(n) for n in getattr(alias, "choices", [alias]))
    return names


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make dev" in first_block
    assert "make test" in first_block


def test_every_setting_is_in_the_configuration_reference() -> None:
    table = README.split("## Configuration", 1)[1]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert _aliases() <= documented, _aliases() - documented


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    named = set(re.findall(r"`?make ([a-z-]+)", README))
    assert named <= targets, named - targets


def test_the_project_documents_link_only_inside_the_repository() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)]+)\)", text):
            assert not re.match(r"[a-z]+://", target), f"{path.name} links outside: {target}"
            assert (path.parent / target.split("#")[0]).resolve().is_relative_to(ROOT), target
            assert (path.parent / target.split("#")[0]).exists(), f"{path.name}: {target} does not exist"
