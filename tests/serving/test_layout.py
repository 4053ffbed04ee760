"""The layering of ``service/serving`` (docs/ARCHITECTURE.md), checked on the source: the HTTP
edge never reaches the runtime, the runtime knows neither HTTP nor the data plane, and only
the TorchScript backend imports torch."""

import ast
import sys
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "service" / "serving"
WEB = ("fastapi", "starlette", "uvicorn")
# (layer, what it must not import): the layer rules of docs/ARCHITECTURE.md
FORBIDDEN = {
    "http": ("service.serving.runtime",),
    "dataplane": ("service.serving.http", *WEB),
    "runtime": ("service.serving.http", "service.serving.dataplane", *WEB),
}
TORCH_ALLOWED = {"runtime/torchscript_backend.py"}


def imported_modules(source: str, module: str) -> set[str]:
    """Every module ``source`` (the module named ``module``) imports, at any depth, with
    relative imports resolved and ``from a import b`` counted as both ``a`` and ``a.b``."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(source: str, relative: str) -> list[str]:
    """The layer rules ``source``, at ``relative`` under service/serving, breaks."""
    module = "service.serving." + relative.removesuffix(".py").replace("/", ".")
    imports = imported_modules(source, module)
    layer = relative.split("/", 1)[0]
    problems = [f"{relative} imports {name}" for name in sorted(imports)
                for banned in FORBIDDEN.get(layer, ())
                if name == banned or name.startswith(banned + ".")]
    if relative not in TORCH_ALLOWED:
        problems += [f"{relative} imports {name}" for name in sorted(imports)
                     if name == "torch" or name.startswith("torch.")]
    return problems


def sources() -> list[tuple[str, str]]:
    return [(path.relative_to(SERVING).as_posix(), path.read_text())
            for path in sorted(SERVING.rglob("*.py"))]


def test_the_package_has_the_three_layers():
    layers = {p.name for p in SERVING.iterdir() if (p / "__init__.py").is_file()}
    assert {"http", "dataplane", "runtime"} <= layers


def test_every_module_keeps_to_its_layer():
    problems = [p for relative, source in sources() for p in violations(source, relative)]
    assert problems == []


def test_module_names_are_unique_and_shadow_no_standard_module():
    names = [Path(relative).stem for relative, _ in sources()
             if not relative.endswith("__init__.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    assert sorted(set(names) & sys.stdlib_module_names) == []


@pytest.mark.parametrize("relative,source", [
    ("http/routes/models_api.py", "from service.serving.runtime.model_repository import X"),
    ("http/app.py", "from service.serving import runtime"),
    ("runtime/batcher.py", "from ..http import error_mapping"),
    ("runtime/workers.py", "import fastapi"),
    ("dataplane/results.py", "def f():\n    import torch.nn\n"),
    ("runtime/model_store.py", "from service.serving.dataplane.windowing import top_k"),
])
def test_a_breach_of_each_rule_is_caught(relative, source):
    assert violations(source, relative)


def test_the_torchscript_backend_may_import_torch():
    assert violations("import torch", "runtime/torchscript_backend.py") == []
