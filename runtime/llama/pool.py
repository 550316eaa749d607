"""How a model's layers are spread over this machine and its RPC workers (pure: no ggml).

llama.cpp keeps the first ``n_layer + 1 - n_gpu_layers`` layers on the CPU and deals the
rest (the output layer counts as one more) to its devices by the cumulative shares of
``tensor_split``. So the local CPU's share is given as the layers *not* offloaded, and
the workers' shares as ``tensor_split``. ``layers_per_device`` repeats llama.cpp's own
rule, in its single-precision arithmetic, so ``--info`` shows what loading will do.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from ..errors import UsageError


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


@dataclass
class Split:
    n_gpu_layers: int  # llama.cpp's: the last this many layers (and the output) leave the CPU
    tensor_split: list[float]  # one share per offload device, in device order
    layers: list[int] = field(default_factory=list)  # [local, device 0, device 1, ...]
    why: str = ""


def parse_shares(text: str, n_devices: int) -> list[float]:
    """``--tensor-split 2,1,1``: this machine's share first, then each worker's in --rpc order."""
    try:
        shares = [float(x) for x in text.split(",")] if text.strip() else []
    except ValueError:
        shares = []
    if len(shares) != n_devices or any(s < 0 for s in shares) or not sum(shares) > 0:
        raise UsageError(
            f"--tensor-split needs {n_devices} shares that are not negative, this machine's first and "
            f"then each --rpc worker's (for example {','.join(['1'] * n_devices)}); got {text!r}"
        )
    return shares


def plan(n_layer: int, shares: list[float], local_is_cpu: bool, why: str) -> Split:
    """``shares``: this machine's first, then each device's; the local share goes to the
    CPU (kept back from offloading) or, with a local GPU, to that GPU, which is then the
    last device."""
    total_layers = n_layer + 1
    total = sum(shares)
    if local_is_cpu:
        local = round(total_layers * shares[0] / total)
        # Every worker named gets at least a layer; the CPU keeps what is left.
        local = min(local, total_layers - sum(1 for s in shares[1:] if s > 0))
        device_shares = shares[1:]
        n_gpu = total_layers - max(local, 0)
    else:
        device_shares = [*shares[1:], shares[0]]
        n_gpu = total_layers
    split = Split(n_gpu, device_shares, why=why)
    split.layers = layers_per_device(n_layer, n_gpu, device_shares)
    return split


def layers_per_device(n_layer: int, n_gpu_layers: int, tensor_split: list[float]) -> list[int]:
    """[layers on the CPU, then on each device], as llama.cpp's load_tensors assigns them."""
    i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_layer + 1)
    total = sum(tensor_split)
    splits, acc = [], 0.0
    for s in tensor_split:
        acc = _f32(acc + _f32(s))
        splits.append(_f32(acc / total))
    counts = [0] * (len(tensor_split) + 1)
    for il in range(n_layer + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            counts[0] += 1
            continue
        at = bisect.bisect_right(splits, _f32(_f32(il - i_gpu_start) / act))
        counts[1 + min(at, len(tensor_split) - 1)] += 1
    return counts
