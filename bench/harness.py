"""The benchmark session: its settings, its prerequisites (models, the reference
llama.cpp, the stub, the bundles), progress on stderr, and how commands are shown."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import make_model
from machine import CpuWatch
from prompts import Prompts, Tokenizer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LLAMABUNDLE = Path(sys.executable).with_name("llamabundle")
STORIES = ROOT.parent / "shared" / "models" / "stories260K.gguf"
SHORT_PROMPT = "Once upon a time"
T0 = time.monotonic()


def log(msg: str) -> None:
    t = int(time.monotonic() - T0)
    print(f"[{t // 60:02d}:{t % 60:02d}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Model:
    label: str  # Q4_0, Q8_0, stories260K, or the file's stem
    path: Path
    bundle: Path | None = None


@dataclass
class Bench:
    runs: int
    threads: int
    ctx: int
    n_prompt: int  # tokens of the long prompt (BOS included)
    n_gen: int
    n_short: int  # tokens of each concurrent client's prompt
    clients: list[int]
    models: list[Model]  # rows 1 and 4; the first one also for rows 2 and 3
    start_models: list[Model]  # row 2
    build_model: Path  # row 5
    ref: Path  # the reference's bin directory
    stub: Path
    work: Path
    parallel: bool = False  # does our server take --parallel?
    constrained: list = field(default_factory=list)  # row 7: (Model, True for /v1/chat/completions)
    wait_idle: float = 0.0  # seconds a turn may wait for other processes to leave the CPU
    wait_budget: float = 300.0  # seconds all turns together may wait
    _prompts: dict = field(default_factory=dict)
    _shown: dict = field(default_factory=dict)
    _watch: CpuWatch | None = None
    _turn: CpuWatch | None = None
    _waited: float = 0.0
    _shares: list = field(default_factory=list)
    _redo: bool = False
    _redos: int = 0
    _row_t: float = 0.0

    def tool(self, name: str) -> Path:
        return self.ref / name

    def prompts(self, model: Model) -> Prompts:
        """Prompt maker for a model's vocabulary; prompts it makes are remembered so
        that commands can show them as placeholders."""
        name = model.path.name  # the synthetic models of one vocabulary share a tokenizer
        key = name.rsplit("-", 1)[0] if name.startswith("synthetic") else model.path
        if key not in self._prompts:
            self._prompts[key] = Prompts(Tokenizer(model.path))
        return self._prompts[key]

    def placeholder(self, text: str, name: str) -> str:
        self._shown[text] = name
        return text

    def show(self, cmd: list[str]) -> str:
        """A command as RESULTS.md lists it: repository paths relative, the reference's
        tools by name, the bundles under their work directory name, prompts by placeholder."""
        out: list[str] = []
        for arg in cmd:
            if arg in self._shown:
                out.append(self._shown[arg])
                continue
            if out and out[-1] == "--port":
                out.append("$PORT")
                continue
            p = Path(arg)
            if arg == str(self.stub):
                arg = "$(llamabundle stub)"
            elif p.is_absolute() and p.parent == self.ref:
                arg = p.name
            elif p.is_absolute() and p.is_relative_to(self.work):
                out.append("$WORK/" + shlex.quote(str(p.relative_to(self.work))))
                continue
            elif p.is_absolute() and p.is_relative_to(ROOT.parent):
                arg = "../" + str(p.relative_to(ROOT.parent)) if not p.is_relative_to(ROOT) else str(
                    p.relative_to(ROOT))  # fmt: skip
            out.append(arg if arg.startswith("$(") else shlex.quote(arg))
        return " ".join(out)

    def begin(self, what: str) -> None:
        self._watch, self._row_t, self._turn, self._waited = CpuWatch(), time.monotonic(), None, 0.0
        self._shares, self._redos = [], 0
        log(what)

    def turns(self):
        """The turns of a row: 0 is the warm-up, 1..runs are measured. After its
        measurements a turn calls keep(i), which may ask for it to be run again."""
        i = 0
        while i <= self.runs:
            self.turn()
            self._redo = False
            yield i
            i += not self._redo

    def keep(self, i: int) -> bool:
        """Whether turn i's samples count: not the warm-up's, nor (with --wait-idle, at most
        twice a row) those of a turn in which other processes used over 30% of the CPU,
        which is then run again."""
        share = self._turn.foreign() if self._turn else 0.0
        if i and self.wait_idle and share > 0.30 and self._redos < 2:
            self._redos += 1
            self._redo = True
            log(f"  run {i} again: other processes used {share:.0%} of the CPU during it")
            return False
        return i > 0

    def turn(self) -> None:
        """Call before each turn. With --wait-idle, when other processes used over 10% of
        the CPU during the last turn, first wait (at most wait_idle s, and wait_budget s in
        all) for a quiet 2 s."""
        if self._turn is not None:
            self._shares.append(self._turn.foreign())
        if self.wait_idle and self.wait_budget > 0 and self._shares and self._shares[-1] > 0.10:
            t0 = time.monotonic()
            while time.monotonic() - t0 < min(self.wait_idle, self.wait_budget):
                watch = CpuWatch()
                time.sleep(2)
                if watch.foreign() < 0.10:
                    break
            self._waited += time.monotonic() - t0
            self.wait_budget -= time.monotonic() - t0
            log(f"  waited {time.monotonic() - t0:.0f} s for other processes to leave the CPU")
        self._turn = CpuWatch()

    def end(self) -> str:
        """A note on the row's duration and on CPU used by other processes meanwhile."""
        if self._turn is not None:
            self._shares.append(self._turn.foreign())
        shares = sorted(self._shares) or [self._watch.foreign() if self._watch else 0.0]
        secs = time.monotonic() - self._row_t - self._waited
        waited = f" (plus {self._waited:.0f} s waiting for a quiet CPU)" if self._waited >= 1 else ""
        waited += f"; {self._redos} run(s) done again, the CPU being busy" if self._redos else ""
        return (f"took {secs:.0f} s{waited}; other processes used {shares[len(shares) // 2]:.0%} of the "
                f"CPU in the median turn, {shares[-1]:.0%} in the busiest")  # fmt: skip


def ensure_models(preset: str, types: list[str], vocab: str = "stories260K") -> dict[str, Path]:
    return {t: make_model.ensure(preset, t, log=log, vocab=vocab) for t in types}


def chat_model() -> Path | None:
    """SmolLM2-135M-Instruct, which install.sh fetches and records in .venv/chat-model."""
    record = ROOT / ".venv" / "chat-model"
    path = Path(record.read_text().strip()) if record.exists() else None
    return path if path is not None and path.exists() else None


def ensure_reference() -> Path:
    """bench/reference.sh: builds once per sdist, flags and CPU, then only prints its path."""
    log("reference llama.cpp: bench/reference.sh")
    out = subprocess.run(["bash", str(HERE / "reference.sh")], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit("bench/reference.sh failed (its output is above)")
    return Path(out.stdout.strip().splitlines()[-1])


def ensure_stub() -> Path:
    log("runtime stub: llamabundle stub (builds it once per runtime version, about a minute)")
    out = subprocess.run([str(LLAMABUNDLE), "stub"], stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip())


def build_bundle(model: Path, stub: Path, out: Path) -> Path:
    subprocess.run([str(LLAMABUNDLE), "build", str(model), "-o", str(out), "--runtime", str(stub)],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def server_has_parallel(bundle: Path) -> bool:
    out = subprocess.run([str(bundle), "--help"], capture_output=True, text=True).stdout
    return "--parallel" in out
