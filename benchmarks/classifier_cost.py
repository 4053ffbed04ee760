"""What DiffRes buys in front of a classifier of real size: CPU time per 1 s window of
compressor + classifier, full resolution against DiffRes at rates 0.5 and 0.75, side by side.

    python benchmarks/classifier_cost.py [--classifier bcresnet] [--width W] [--batch 32]
                                         [--repeats 20] [--no-onnx]

Prints the classifier's MFLOPs (conv and linear multiply-adds x 2, ``classifier_mflops``) and
parameters, then the best-of-``--repeats`` milliseconds per window at ``--batch`` for eager
PyTorch (inference mode; one thread, then the default threads) and for onnxruntime (each
ServingGraph exported with ``service.export.export_onnx``, one intra-op thread), with the
ratio full / DiffRes. Repeats are interleaved across the three models so all see the same
machine load; the minimum is taken because on shared cores anything else measures the
neighbours. Random weights: the cost does not depend on them.
"""

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.classifier import classifier_mflops  # noqa: E402
from service.pipeline import AudioClassifier, serving_graph  # noqa: E402

T, F, N_CLASSES = 101, 40, 12  # 1 s at a 10 ms hop, 40 mels; the keyword set's 12 labels
SETTINGS = (("full", "full", 0.0), ("diffres 0.5", "diffres", 0.5),
            ("diffres 0.75", "diffres", 0.75))


def best_ms(runners: dict[str, Callable[[], object]], repeats: int, batch: int,
            warmup: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` ms per window of each runner, calls interleaved."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * min(ts) / batch for name, ts in times.items()}


def report(title: str, ms: dict[str, float]) -> None:
    full = ms["full"]
    cells = "  ".join(f"{name} {v:.3f} ms ({full / v:.2f}x)" for name, v in ms.items())
    print(f"{title:<28} {cells}")


def onnx_runners(models: dict[str, AudioClassifier], x: torch.Tensor, directory: Path
                 ) -> dict[str, Callable[[], object]]:
    import onnxruntime as ort

    from service.export import export_onnx

    runners = {}
    for name, model in models.items():
        with torch.no_grad():
            keys = [k for k, v in model.compressor(x[:2]).items() if isinstance(v, torch.Tensor)]
        graph = serving_graph(model.compressor, model.classifier, model.in_t_dim,
                              model.out_t_dim, keys)
        path = directory / f"{name.replace(' ', '_')}.onnx"
        axes = {n: {0: "batch"} for n in [*graph.input_names, *graph.output_names]}
        export_onnx(graph, x[:2], path, graph.input_names, graph.output_names, axes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        runners[name] = lambda s=session, f=feed: s.run(None, f)
    return runners


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default="bcresnet", choices=["cnn", "bcresnet"])
    parser.add_argument("--width", type=int, default=None,
                        help="default: the classifier's own (bcresnet 40, cnn 32)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    models = {name: AudioClassifier.build(kind, T, F, rate, N_CLASSES, width=args.width,
                                          dropout=0.1, classifier=args.classifier).eval()
              for name, kind, rate in SETTINGS}
    x = torch.randn(args.batch, T, F) - 6.0  # log-mel-like values
    width = "default" if args.width is None else args.width
    print(f"{args.classifier} width {width}, batch {args.batch}, best of {args.repeats}, "
          f"torch {torch.__version__}")
    for name, model in models.items():
        c, t = model.compressor.feature_channels, model.out_t_dim
        n_params = sum(p.numel() for p in model.classifier.parameters())
        print(f"  {name:<13} feature [{c}, {t}, {F}]: classifier "
              f"{classifier_mflops(model.classifier, c, t, F):.1f} MFLOPs, {n_params} params; "
              f"compressor {sum(p.numel() for p in model.compressor.parameters())} params")

    default_threads = torch.get_num_threads()
    with torch.inference_mode():
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            runners = {name: (lambda m=model: m(x)) for name, model in models.items()}
            report(f"eager, {threads} thread(s)", best_ms(runners, args.repeats, args.batch))
        torch.set_num_threads(default_threads)
    if not args.no_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            runners = onnx_runners(models, x, Path(tmp))
            report("onnxruntime, 1 thread", best_ms(runners, args.repeats, args.batch))


if __name__ == "__main__":
    main()
