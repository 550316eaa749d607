"""``GET /metrics``: the server's counters in Prometheus' text format, under the names
llama-server gives them (``llamacpp:...``), so dashboards made for it work unchanged.

On by default: the figures are counts and rates (what /health already tells), and when
the server needs an API key, /metrics needs it too.
"""

from __future__ import annotations

import threading


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.prompt_tokens = 0  # prompt tokens decoded (not those reused from the cache)
        self.cached_tokens = 0  # prompt tokens reused from the cache
        self.prompt_seconds = 0.0
        self.predicted_tokens = 0
        self.predicted_seconds = 0.0
        self.requests: dict[int, int] = {}  # HTTP status -> answers sent
        self.largest = 0  # the largest prompt + answer of one request, in tokens

    def record(self, stats) -> None:
        """One finished generation."""
        with self.lock:
            self.prompt_tokens += stats.prompt_tokens - stats.cached_tokens
            self.cached_tokens += stats.cached_tokens
            self.prompt_seconds += stats.prompt_seconds
            self.predicted_tokens += stats.completion_tokens
            self.predicted_seconds += stats.generation_seconds
            self.largest = max(self.largest, stats.prompt_tokens + stats.completion_tokens)

    def answered(self, status: int) -> None:
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1

    def render(self, worker) -> str:
        engine = worker.engine
        decodes = engine.decodes if engine else 0
        busy = sum(s.state != "idle" for s in engine.slots) if engine else 0
        with self.lock:
            rows = [
                ("counter", "prompt_tokens_total", "Number of prompt tokens processed.", self.prompt_tokens),
                ("counter", "prompt_tokens_cached_total", "Number of prompt tokens reused from the cache.",
                 self.cached_tokens),
                ("counter", "prompt_seconds_total", "Prompt process time", self.prompt_seconds),
                ("counter", "tokens_predicted_total", "Number of generation tokens processed.",
                 self.predicted_tokens),
                ("counter", "tokens_predicted_seconds_total", "Predict process time", self.predicted_seconds),
                ("counter", "n_decode_total", "Total number of llama_decode() calls", decodes),
                ("counter", "n_tokens_max", "Largest observed n_tokens.", self.largest),
                ("gauge", "n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
                 engine.busy_per_decode / decodes if decodes else 0.0),
                ("gauge", "prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
                 _rate(self.prompt_tokens, self.prompt_seconds)),
                ("gauge", "predicted_tokens_seconds", "Average generation throughput in tokens/s.",
                 _rate(self.predicted_tokens, self.predicted_seconds)),
                ("gauge", "requests_processing", "Number of requests processing.", busy),
                ("gauge", "requests_deferred", "Number of requests deferred.", worker.status()["queued"]),
            ]  # fmt: skip
            answered = sorted(self.requests.items())
        out = []
        for kind, name, text, value in rows:
            out += [f"# HELP llamacpp:{name} {text}", f"# TYPE llamacpp:{name} {kind}",
                    f"llamacpp:{name} {_number(value)}"]  # fmt: skip
        out += ["# HELP llamabundle:http_requests_total HTTP answers sent, by status.",
                "# TYPE llamabundle:http_requests_total counter"]  # fmt: skip
        out += [f'llamabundle:http_requests_total{{code="{code}"}} {n}' for code, n in answered]
        return "\n".join(out) + "\n"


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def _number(value) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
