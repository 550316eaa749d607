"""runtime/ is what ships inside the executable: it never imports the bundler or click,
and driving llama.cpp needs neither numpy nor gguf.

Every module of the ``runtime`` package is found by walking it, subpackages
included, so a module added or moved later is checked without naming it here."""

import json
import subprocess
import sys

from conftest import ROOT

FORBIDDEN = ("bundler", "click", "gguf", "numpy")

# Runs in a fresh interpreter (this test process has imported the bundler and more), with
# FORBIDDEN as its arguments.
CHECK = """
import importlib, json, pkgutil, sys
import runtime

failed = []
def onerror(name):
    failed.append(f"{name}: {sys.exc_info()[1]!r}")

names = ["runtime"] + [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.", onerror=onerror)
                       if m.name.rsplit(".", 1)[-1] != "__main__"]  # __main__ runs the program
modules = [importlib.import_module(n) for n in names]
# Load the llama.cpp bindings the way the runtime does, wherever that function lives.
loaders = [m.bindings for m in modules if callable(getattr(m, "bindings", None))
           and getattr(m.bindings, "__module__", None) == m.__name__]
for load in loaders:
    load()
print(json.dumps({"imported": names, "failed": failed, "loaders": len(loaders),
                  "bad": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))}))
"""


def _sources() -> set[str]:
    """The module name of every runtime/**/*.py but __main__.py."""
    root = ROOT / "runtime"
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_runtime_imports_nothing_from_the_build_side():
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, *FORBIDDEN], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == []
    # the walk reached every source file, in every subpackage
    assert set(out["imported"]) == _sources(), sorted(set(out["imported"]) ^ _sources())
    assert out["loaders"] >= 1, "no runtime module has the bindings() that loads llama.cpp"
    assert out["bad"] == [], f"the runtime imported {out['bad']}"


def test_runtime_sources_do_not_mention_the_bundler():
    paths = list((ROOT / "runtime").rglob("*.py"))
    assert paths
    for path in paths:
        text = path.read_text()
        for needle in ("import bundler", "from bundler", "import click", "from click"):
            assert needle not in text, (path, needle)
