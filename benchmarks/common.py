"""Helpers shared by the benchmark scripts: the repository on ``sys.path``, machine facts for the record,
interleaved timing and XLA's compiled memory / cost figures.

The machine the project is developed on has 2 CPU cores shared with other jobs, so absolute times are noisy:
the scripts time the variants they compare *interleaved* (one call of each in turn, repeated) and report
medians and ratios, with the 1-minute load average at the time of the run.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # `configs` and `ncsn_jax` from this checkout

RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")


def machine() -> dict[str, Any]:
    """Device, software versions, date and load, stored with every result."""
    import jax  # pylint: disable=g-import-not-at-top

    device = jax.devices()[0]
    description = f"{device.device_kind} x{jax.device_count()}"
    if device.platform == "cpu":
        description += f" ({os.cpu_count()} cores, {platform.machine()}{cpu_vector_units()})"
    return {
        "date": datetime.date.today().isoformat(),
        "backend": jax.default_backend(),
        "device": description,
        "jax": jax.__version__,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
    }


def cpu_vector_units() -> str:
    """``", AVX-512"`` or ``", AVX2"`` from /proc/cpuinfo (Linux; empty elsewhere): XLA:CPU's convolutions run
    at about twice the speed with AVX-512 (benchmarks/README.md), so CPU figures name it."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    if "avx512f" in flags:
        return ", AVX-512"
    return ", AVX2" if "avx2" in flags else ""


def limit_threads(threads: int, device: str = "cpu") -> int:
    """Restricts this process to ``threads`` cores and turns on XLA's multi-threaded Eigen; call it before JAX
    starts (XLA reads ``XLA_FLAGS`` and sizes its CPU thread pool from the schedulable cores when the backend
    starts). ``threads = 0`` keeps every core. ``device="cpu"`` also pins JAX to the CPU. Returns the count;
    give the same to ``torch.set_num_threads``."""
    available = sorted(os.sched_getaffinity(0))
    threads = threads or len(available)
    if threads < len(available):
        os.sched_setaffinity(0, available[:threads])
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true").strip()
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    return threads


def torch_reference():
    """``tests/torch_reference.py`` (the authors' networks re-typed in PyTorch), loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "torch_reference", os.path.join(ROOT, "tests", "torch_reference.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TorchReference:
    """The authors' network (``tests/torch_reference.py``, width ``config.model.ngf``), loss, optimiser and
    EMA, training on one fixed batch as ermongroup/ncsnv2's runner does."""

    def __init__(self, torch, kind: str, config, x_nhwc, device: str):
        from ncsn_jax import config_lib  # pylint: disable=g-import-not-at-top

        self.torch = torch
        self.device = device
        reference = torch_reference()
        sigmas = [float(s) for s in config_lib.sigmas(config)]
        net = reference.build_torch_reference(torch).RefineNet(
            kind, config.model.ngf, config.data.num_channels, config.data.image_size, sigmas
        )
        self.net = net.to(device)
        self.sigmas = torch.tensor(sigmas, device=device)
        self.optimizer = torch.optim.Adam(
            self.net.parameters(),
            lr=config.optim.lr,
            betas=(config.optim.beta1, config.optim.beta2),
            eps=config.optim.eps,
            weight_decay=config.optim.weight_decay,
        )
        self.ema_rate = config.model.ema_rate
        self.shadow = {n: p.detach().clone() for n, p in self.net.named_parameters()} if self.ema_rate else {}
        self.x = torch.tensor(reference.nchw(x_nhwc), device=device)

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def train_step(self) -> float:
        """ncsnv2's ``anneal_dsm_score_estimation`` (a level per example, ``½‖s(x + σz) + z/σ‖² σ²``),
        ``optimizer.step()`` and ``EMAHelper.update``."""
        torch, x = self.torch, self.x
        labels = torch.randint(0, len(self.sigmas), (x.shape[0],), device=x.device)
        used_sigmas = self.sigmas[labels].view(x.shape[0], *([1] * len(x.shape[1:])))
        noise = torch.randn_like(x) * used_sigmas
        target = -1 / (used_sigmas**2) * noise
        scores = self.net(x + noise, labels)
        loss = 0.5 * ((scores - target) ** 2).view(x.shape[0], -1).sum(dim=-1) * used_sigmas.squeeze() ** 2
        loss = loss.mean(dim=0)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.ema_rate:
            for name, param in self.net.named_parameters():
                shadow = self.shadow[name]
                shadow.data = (1.0 - self.ema_rate) * param.data + self.ema_rate * shadow.data
        self._sync()
        return float(loss.detach())

    def forward(self, x, labels):
        """``scorenet(x, labels)`` under ``no_grad``."""
        with self.torch.no_grad():
            out = self.net(x, labels)
        self._sync()
        return out


def interleaved_medians(calls: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time in seconds of each zero-argument ``call`` (which must block until its result is
    ready), measured round-robin: repetition r times every call once, so a load spike hits all of them."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def compiled_peak_bytes(compiled: Any) -> int:
    """Bytes XLA allocates for one call of a compiled computation, from ``compiled.memory_analysis()``:
    arguments + outputs + temporaries − aliased (donated) buffers. (Its ``peak_memory_in_bytes`` leaves the
    temporaries out on CPU in jax 0.10, so it is not used.)"""
    stats = compiled.memory_analysis()
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def compiled_flops(compiled: Any) -> float:
    """FLOPs of one call from XLA's cost analysis of the compiled computation (every op, not only convs)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


CPU_PEAK_GFLOPS_PER_CORE = 91.0
"""Float32 peak of one core of the development machine: its best measured single-core SGEMM (AMD EPYC, AVX-512)."""

# Dense peak TFLOP/s per dtype from the vendors' data sheets (no sparsity). "tf32" is what float32 convolutions and
# matrix products run at on these GPUs by default: JAX's default precision and PyTorch's cudnn.allow_tf32.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0},
    "H100": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},  # SXM
    "H200": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
    "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0},
}


def peak_tflops(dtype: str = "auto", threads: int = 0) -> tuple[float, str]:
    """(peak TFLOP/s, what it is) of JAX's first device for ``dtype`` ("auto": float32 on the CPU, tf32 on a
    GPU, the rate float32 convolutions actually run at): ``threads`` × :data:`CPU_PEAK_GFLOPS_PER_CORE` on the
    CPU (0: every core), the data-sheet figure of :data:`GPU_PEAK_TFLOPS` on a GPU; ``(0.0, reason)`` when the
    device is not in the table."""
    import jax  # pylint: disable=g-import-not-at-top

    device = jax.devices()[0]
    if device.platform == "cpu":
        dtype = "float32" if dtype == "auto" else dtype
        if dtype != "float32":
            return 0.0, f"no CPU peak for {dtype}"
        cores = threads or len(os.sched_getaffinity(0))
        return (
            cores * CPU_PEAK_GFLOPS_PER_CORE / 1e3,
            f"float32, {cores} x {CPU_PEAK_GFLOPS_PER_CORE:g} GFLOP/s",
        )
    dtype = "tf32" if dtype == "auto" else dtype
    for name, peaks in GPU_PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if name in device.device_kind and dtype in peaks:
            return peaks[dtype], f"{dtype}, {name} data sheet"
    return 0.0, f"no peak known for {device.device_kind} {dtype}: pass --peak_tflops"


def write_json(name: str, payload: Any) -> str:
    """Writes ``benchmarks/results/<name>.json`` and returns its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    return path


def append_json(name: str, rows: list[Any]) -> str:
    """Appends ``rows`` to the list in ``benchmarks/results/<name>.json`` (runs on several machines or days
    side by side) and returns its path."""
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    previous = json.load(open(path)) if os.path.exists(path) else []
    return write_json(name, previous + rows)


def print_table(rows: list[Mapping[str, Any]], columns: list[str]) -> None:
    """A Markdown table of ``rows`` (floats with 3 significant digits, missing values blank)."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
