"""The README, docs/ and examples/ stay true to each other and to agproxy: links land, configs
shown in the text load, the table of examples names every example and the variables it reads,
and `make test` says why tests were skipped and can skip the Claude Code download."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from agproxy import config_from_dict
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set:
    return {_slug(line.lstrip("#")) for line in page.read_text(encoding="utf-8").splitlines()
            if re.match(r"#{1,6} ", line)}


def _links(page: Path) -> Iterator[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    yield from re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_lands(page: Path):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # http(s) and mailto links are not checked offline
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(link)
    assert not broken, broken


def _json_blocks(page: Path) -> Iterator[Tuple[str, str]]:
    """Each ```json block with the line of text just before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "```json":
            end = lines.index("```", i + 1)
            yield (lines[i - 2] if i >= 2 else ""), "\n".join(lines[i + 1:end])


def _environment_for(text: str) -> Dict[str, str]:
    """A value for each variable without a default (the others take theirs)."""
    return {name: "value" for name, default in _VARIABLE.findall(text) if not default}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_shown_in_the_text_loads(page: Path):
    for intro, block in _json_blocks(page):
        raw = json.loads(block)
        if "upstreams" in raw:
            assert config_from_dict(raw, _environment_for(block), "docs").upstreams
        shown_file = re.search(r"`(examples/[\w.-]+\.json)`:$", intro)
        if shown_file:  # "... `examples/gemini.json`:" promises the file itself
            assert raw == json.loads((ROOT / shown_file.group(1)).read_text(encoding="utf-8"))


def _configured_values(raw: dict) -> Iterator[Tuple[str, str]]:
    for upstream in raw["upstreams"]:
        if upstream["kind"] == "demo":
            continue
        yield f"{upstream['name']}.base_url", upstream["base_url"]
        for account in upstream["accounts"]:
            yield f"{upstream['name']}.{account['name']}.api_key", account["api_key"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_takes_its_base_urls_and_keys_from_variables(example: Path):
    """So that a user sets variables rather than editing a file that points at someone else's server."""
    raw = json.loads(example.read_text(encoding="utf-8"))
    fixed = [where for where, value in _configured_values(raw) if not _VARIABLE.search(value)]
    assert not fixed, f"{example.name} hard-codes {fixed}"


def _example_table_rows() -> Dict[str, str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Which example fits my upstream", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        found = re.search(r"`examples/([\w.-]+\.json)`", line)
        if line.startswith("|") and found:
            rows[found.group(1)] = line
    return rows


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_readme_table_names_every_example_with_the_variables_it_reads(example: Path):
    rows = _example_table_rows()
    assert example.name in rows, f"README's table of examples has no row for {example.name}"
    text = example.read_text(encoding="utf-8")
    missing: List[str] = []
    for name, default in _VARIABLE.findall(text):
        cell = rows[example.name]
        if f"`{name}`" not in cell or (default and f"`{default[2:]}`" not in cell):
            missing.append(name + default)
    assert not missing, f"README's row for {example.name} does not give {missing}"


def _make(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_test_lists_skipped_tests_with_their_reasons():
    assert re.search(r"-m pytest .*-rs\b", _make("test"))


def test_make_test_can_skip_the_claude_code_download():
    assert "npm install" in _make("claude-cli")
    skipped = _make("claude-cli", "SKIP_CLAUDE_CLI=1")
    assert "npm" not in skipped and "SKIP_CLAUDE_CLI" in skipped
