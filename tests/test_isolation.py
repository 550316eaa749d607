"""runtime/ is what ships inside the executable: it never imports the bundler or click,
and driving llama.cpp needs neither numpy nor gguf."""

import subprocess
import sys

from conftest import ROOT

CHECK = """
import sys
import runtime.app, runtime.backend, runtime.chat, runtime.engine, runtime.hardware
import runtime.info, runtime.payload, runtime.session, runtime.settings
runtime.backend.bindings()
bad = sorted({m.split('.')[0] for m in sys.modules} & {'bundler', 'click', 'gguf', 'numpy'})
print(','.join(bad))
"""


def test_runtime_imports_nothing_from_the_build_side():
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_runtime_sources_do_not_mention_the_bundler():
    for path in (ROOT / "runtime").glob("*.py"):
        text = path.read_text()
        assert "import bundler" not in text and "from bundler" not in text, path
        assert "import click" not in text, path
