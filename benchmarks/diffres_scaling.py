"""DiffRes forward cost against the published dense formulation, side by side in one run.

    python benchmarks/diffres_scaling.py [--lengths 1000 3000 10000 30000] [--repeats 5]
                                         [--keep-freed-memory]

For each T it times (median of interleaved repeats, inference mode) the importance
estimator alone, the linear-time DiffRes forward and the dense forward (the published
[B, T, t] weight matrix; skipped where it would not fit in --dense-budget-gb), and measures
the peak memory each forward adds, in a fresh subprocess per measurement (peak RSS over
the RSS just before the call). It prints a table and the ratios the targets are about.

With glibc's defaults every tensor over its mmap threshold (at most 32 MB) is a fresh mapping
whose pages the kernel zero-fills on first touch; the forward's output at large T is one.
--keep-freed-memory re-runs the timings with glibc keeping freed memory for reuse, as a
long-running process with a tuned allocator would.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.diffres import DiffRes  # noqa: E402
from service.diffres.dense import dense_diffres  # noqa: E402

B, F, RATE = 8, 128, 0.75
# Dense forward holds about this many [B, T, t] float32-sized tensors at its peak.
DENSE_COPIES = 6
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def make(t: int) -> tuple[DiffRes, torch.Tensor]:
    torch.manual_seed(0)
    model = DiffRes(t, F, RATE).eval()
    x = torch.randn(B, t, F) - 4.0
    x[:, : t // 10] = -15.0
    return model, x


def runners(model: DiffRes, x: torch.Tensor) -> dict:
    def estimator() -> torch.Tensor:
        return model.model(x.permute(0, 2, 1))

    def linear() -> torch.Tensor:
        return model(x)["feature"]

    def dense() -> torch.Tensor:
        raw = torch.sigmoid(model.model(x.permute(0, 2, 1)).permute(0, 2, 1))
        return dense_diffres(x, raw, model.pos_emb, RATE)["feature"]

    return {"estimator": estimator, "linear": linear, "dense": dense}


def dense_fits(t: int, budget_gb: float) -> bool:
    out_len = int(t * (1 - RATE))
    return B * t * out_len * 4 * DENSE_COPIES <= budget_gb * 2**30


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def peak_memory_child(kind: str, t: int) -> None:
    """Runs in a subprocess: prints the peak bytes one (warm) forward adds over its start."""
    model, x = make(t)
    run = runners(model, x)[kind]
    with torch.inference_mode():
        run()  # one-off allocations (oneDNN primitives, thread pools) are not the forward's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark
        before = rss_bytes()
        run()
        peak = peak_rss_bytes()
    print(json.dumps({"peak": max(peak - before, 0)}))


def peak_memory(kind: str, t: int) -> int:
    # A fixed mmap threshold makes every large tensor its own mapping, returned to the
    # system when freed, so the RSS before the measured call holds no freed forward.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(t)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def time_side_by_side(t: int, kinds: list[str], repeats: int) -> dict[str, float]:
    model, x = make(t)
    run = runners(model, x)
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    with torch.inference_mode():
        for kind in kinds:  # warm-up
            run[kind]()
        for _ in range(repeats):
            for kind in kinds:
                start = time.perf_counter()
                run[kind]()
                samples[kind].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 3000, 10000, 30000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-budget-gb", type=float, default=12.0)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="time with glibc keeping freed memory (see the module docstring)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.child[0], int(args.child[1]))
        return
    if args.keep_freed_memory and any(os.environ.get(k) != v for k, v in KEEP_FREED_MEMORY.items()):
        # glibc reads these at start-up, so the process starts again with them set.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED_MEMORY})

    allocator = "glibc keeping freed memory" if args.keep_freed_memory else "glibc defaults"
    print(f"B={B} F={F} rate={RATE} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"allocator: {allocator}")
    print(f"{'T':>6} {'t':>5} | {'estimator s':>11} {'linear s':>9} {'dense s':>9} | "
          f"{'linear MB':>9} {'dense MB':>9} | {'dense/lin time':>14} {'dense/lin mem':>13} "
          f"{'lin/estim':>9}")
    rows = {}
    for t in args.lengths:
        kinds = ["estimator", "linear"] + (["dense"] if dense_fits(t, args.dense_budget_gb) else [])
        repeats = args.repeats if t < 10000 else max(2, args.repeats // 2)
        times = time_side_by_side(t, kinds, repeats)
        mem = {k: peak_memory(k, t) for k in kinds if k != "estimator"}
        rows[t] = (times, mem)
        dense_t = times.get("dense")
        dense_m = mem.get("dense")
        print(f"{t:>6} {int(t * (1 - RATE)):>5} | {times['estimator']:>11.4f} "
              f"{times['linear']:>9.4f} {dense_t if dense_t else float('nan'):>9.4f} | "
              f"{mem['linear'] / 2**20:>9.1f} "
              f"{(dense_m or float('nan')) / 2**20:>9.1f} | "
              f"{(dense_t / times['linear']) if dense_t else float('nan'):>14.1f} "
              f"{(dense_m / max(mem['linear'], 1)) if dense_m else float('nan'):>13.1f} "
              f"{times['linear'] / times['estimator']:>9.2f}")
    if 3000 in rows and 30000 in rows:
        ratio = rows[30000][0]["linear"] / rows[3000][0]["linear"]
        print(f"linear forward T=30000 / T=3000: {ratio:.2f}x (10x more frames)")


if __name__ == "__main__":
    main()
