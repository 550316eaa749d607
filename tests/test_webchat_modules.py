"""The web chat's files as the server serves them: flat in templates/ (no folders), the
entry loaded as an ES module, every import a sibling file, every module reached."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import ROOT

TEMPLATES = ROOT / "templates"
IMPORT_RE = re.compile(
    r"""^\s*(?:import|export)\b[^'"]*?\bfrom\s+['"]([^'"]+)['"]|^\s*import\s+['"]([^'"]+)['"]""", re.M
)


def modules() -> dict[str, list[str]]:
    """Each .js file in templates/ and the specifiers it imports."""
    return {
        p.name: [a or b for a, b in IMPORT_RE.findall(p.read_text())] for p in sorted(TEMPLATES.glob("*.js"))
    }


def test_entry_is_a_module_script():
    html = (TEMPLATES / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts == ['<script type="module" src="/chat.js">'], scripts


def test_imports_are_sibling_files_and_all_modules_are_used():
    mods = modules()
    assert "chat.js" in mods and len(mods) > 1
    assert not [p for p in TEMPLATES.rglob("*") if p.is_dir()], (
        "the server serves templates/ flat: no folders"
    )
    for name, specs in mods.items():
        assert "import(" not in (TEMPLATES / name).read_text(), f"{name}: dynamic import"
        for spec in specs:
            assert re.fullmatch(r"\./[\w.-]+\.js", spec), f"{name} imports {spec!r}: use ./<file>.js"
            assert spec[2:] in mods, f"{name} imports {spec}, which templates/ does not have"
    reached, todo = set(), ["chat.js"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += [spec[2:] for spec in mods[name]]
    assert reached == set(mods), f"never imported: {sorted(set(mods) - reached)}"


def test_modules_parse(tmp_path):
    """`node --check` on each module (as ES modules: a package.json says so)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (`node`): needed to syntax-check the page's modules")
    for p in TEMPLATES.glob("*.js"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "package.json").write_text('{"type": "module"}\n')
    for p in sorted(tmp_path.glob("*.js")):
        proc = subprocess.run([node, "--check", str(p)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{p.name}: {proc.stderr}"
