"""``python -m service export``: export a user's front end, compressor and classifier.

    python -m service export --factory my_pkg.my_mod:build --labels labels.txt \\
        --name my-model --version 1 --store model_store [--formats onnx,torchscript]

``build()`` returns ``{"frontend": ..., "compressor": ..., "classifier": ...}``, modules with
their weights loaded. ``--diffres-state ckpt.pt --rate R`` loads a pydiffres DiffRes state
dict instead of (or into) the factory's compressor. See docs/BRING_YOUR_OWN_MODEL.md.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from service.errors import DiffresError

ROLES = ("frontend", "compressor", "classifier")
log = logging.getLogger("service.export")


def load_factory(spec: str):  # -> Callable[[], Mapping[str, nn.Module]]
    """``package.module:function`` -> the function."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--factory must be package.module:function, got {spec!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load --factory {spec}: {err}") from err
    if not callable(factory):
        raise ValueError(f"--factory {spec} is not a function")
    return factory


def read_labels(path: Path) -> list[str]:
    """One label per line, in class order; blank lines and surrounding spaces ignored."""
    labels = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"{path} holds no labels (one per line)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path} repeats a label")
    return labels


def diffres_from_state(path: Path, rate: float | None, into=None):
    """A DiffRes holding the pydiffres state dict at ``path`` (T and F from its pos_emb)."""
    import torch

    from service.diffres import DiffRes

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle error, a zip error, a missing file: all one message
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read {path} as a state dict: {first}") from err
    state = state.get("state_dict", state) if isinstance(state, Mapping) else state
    if not isinstance(state, Mapping) or "pos_emb" not in state:
        raise ValueError(f"{path} is not a DiffRes state dict (no pos_emb)")
    if into is None:
        if rate is None:
            raise ValueError("--diffres-state needs --rate (the dimension reduction rate), "
                             "which a state dict does not hold")
        _, t, f = state["pos_emb"].shape
        into = DiffRes(int(t), int(f), rate)
    into.load_state_dict(state)
    return into


def tolerance_pairs(values: list[str]) -> dict[str, float]:
    out = {}
    for value in values:
        name, _, number = value.partition("=")
        try:
            out[name.strip()] = float(number)
        except ValueError:
            raise ValueError(f"--tolerance takes OUTPUT=VALUE, got {value!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(message)s")
    try:
        from service.export import export_model_dir

        labels = read_labels(args.labels)
        modules = dict(load_factory(args.factory)())
        if args.diffres_state is not None:
            modules["compressor"] = diffres_from_state(args.diffres_state, args.rate,
                                                       modules.get("compressor"))
        missing = [role for role in ROLES if role not in modules]
        if missing:
            raise ValueError(f"the factory returned no {missing}; it must return a mapping "
                             f"with {list(ROLES)}")
        out_dir = Path(args.store) / args.name / str(args.version)
        manifest = export_model_dir(
            modules["compressor"], modules["classifier"], modules["frontend"], out_dir,
            args.name, args.version, labels, formats=args.formats.split(","),
            window_frames=args.window_frames, sample_rate=args.sample_rate,
            hop_length=args.hop_length, tolerances=tolerance_pairs(args.tolerance))
    except (DiffresError, ValueError, FileExistsError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    worst = manifest.metrics["export_check"]["model"]
    print(f"exported {out_dir}: {', '.join(sorted(manifest.artifacts))}")
    print(f"  {len(labels)} labels, window {manifest.compressor.in_t_dim} frames x "
          f"{manifest.frontend.n_mels} bands at {manifest.frontend.sample_rate} Hz, "
          f"{manifest.compressor.kind} to {manifest.compressor.out_t_dim} frames")
    for fmt, diffs in worst.items():
        print(f"  {fmt}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export your own model to a model store",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factory", required=True,
                        help="package.module:function returning frontend, compressor, "
                             "classifier")
    parser.add_argument("--labels", type=Path, required=True, help="one label per line")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--formats", default="onnx,torchscript",
                        help="onnx, torchscript or both (comma-separated)")
    parser.add_argument("--diffres-state", type=Path,
                        help="a pydiffres DiffRes state dict (.pt) for the compressor")
    parser.add_argument("--rate", type=float,
                        help="DiffRes dimension reduction rate, with --diffres-state")
    parser.add_argument("--window-frames", type=int,
                        help="frames per window, if the compressor has no input_seq_length")
    parser.add_argument("--sample-rate", type=int, help="if the front end has no sample_rate")
    parser.add_argument("--hop-length", type=int, help="if the front end has no hop_length")
    parser.add_argument("--tolerance", action="append", default=[], metavar="OUTPUT=VALUE",
                        help="override an output's export tolerance (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the exporters' own output")
    parser.set_defaults(func=run)
