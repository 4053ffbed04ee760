"""Two exported versions of one model, side by side in ONNX Runtime: same outputs? same bits
alone and batched? which is faster?

    python benchmarks/onnx_versions.py [--model kws12-diffres] [--old 2] [--new 3]
                                       [--model-store model_store] [--batch 32] [--repeats 25]

Run before publishing a re-export: the outputs of the two versions on one batch of random
log-mel windows (bit-identical or the largest difference), how many of the batch's windows
give other bits alone than batched in the new version, and the median time per call of each
at batch 1 and at ``--batch`` (one intra-op thread, calls interleaved so both see the same
machine load).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.manifest import Manifest  # noqa: E402


def session(model_dir: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_dir / "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def median_ms(old: ort.InferenceSession, new: ort.InferenceSession, feed: dict,
              repeats: int, calls: int) -> tuple[float, float]:
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        for name, sess in (("old", old), ("new", new)):
            start = time.perf_counter()
            for _ in range(calls):
                sess.run(None, feed)
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times["old"]), statistics.median(times["new"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="kws12-diffres")
    parser.add_argument("--old", type=int, default=2)
    parser.add_argument("--new", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()

    old_dir, new_dir = (args.model_store / args.model / str(v) for v in (args.old, args.new))
    manifest = Manifest.read(new_dir)
    shape = (args.batch, manifest.compressor.in_t_dim, manifest.frontend.n_mels)
    x = np.random.default_rng(0).normal(-6.0, 2.0, shape).astype(np.float32)
    name = manifest.inputs[0].name
    old, new = session(old_dir), session(new_dir)
    outputs = [o.name for o in new.get_outputs()]
    batched = new.run(None, {name: x})
    print(f"{args.model} /{args.old} vs /{args.new}, batch of {args.batch} windows {shape[1:]}")
    for out, a, b in zip(outputs, old.run(None, {name: x}), batched):
        same = "bit-identical" if np.array_equal(a, b) else f"max |diff| {np.abs(a - b).max():.3g}"
        print(f"  {out}: {same}")
    moved = sum(not all(np.array_equal(alone[0], full[i])
                        for alone, full in zip(new.run(None, {name: x[i:i + 1]}), batched))
                for i in range(args.batch))
    print(f"/{args.new}: windows whose outputs alone differ from batched: {moved} of {args.batch}")
    calls = max(1, 64 // args.batch) if shape[1] < 500 else 2
    for batch, n in ((1, 8 * calls), (args.batch, calls)):
        t_old, t_new = median_ms(old, new, {name: x[:batch]}, args.repeats, n)
        print(f"batch {batch}: /{args.old} {t_old:.3f} ms, /{args.new} {t_new:.3f} ms per call "
              f"(/{args.old} / /{args.new} = {t_old / t_new:.2f}x)")


if __name__ == "__main__":
    main()
