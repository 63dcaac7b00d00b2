"""The layers of the package import only from themselves and the layers below them.

From the bottom: constants, logging and the config schema; the kernels (Triton, the fake
kernels of the primitives); the ops; the recipe (CAM, refinement, pseudo labels, losses); the
models; the data; the engine; on top the CLI, the compat drop-ins and the self-test. Every ``import`` of
every module counts, including those inside functions.
"""
import ast
from pathlib import Path

import pytest

import tscd
import tscd.kernels

#: Where each package's modules lie: ``tscd.kernels`` is the repository's top-level ``kernels/``.
PACKAGE_ROOTS = {package.__name__: Path(package.__file__).resolve().parent for package in (tscd, tscd.kernels)}
LAYERS = {
    "tscd": 0, "tscd.constants": 0, "tscd.log": 0, "tscd.config": 0,
    "tscd.kernels": 1,
    "tscd.ops": 2,
    "tscd.class_activation": 3, "tscd.refine": 3, "tscd.losses": 3,
    "tscd.models": 4,
    "tscd.data": 5,
    "tscd.engine": 6,
    "tscd.cli": 7, "tscd.__main__": 7, "tscd.compat": 7, "tscd.selftest": 7,
}


def layer_of(module: str) -> int | None:
    """The layer of a ``tscd`` module (longest matching prefix); None outside the package."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in LAYERS and (end > 1 or len(parts) == 1):
            return LAYERS[name]
    return None


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from . import x" may import the submodule x
            found += [(node.lineno, f"{base}.{alias.name}" if not node.module else base) for alias in node.names]
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    own = layer_of(module)
    return [f"{module}:{line} imports {target} (layer {layer_of(target)} above {own})"
            for line, target in imported_modules(source, module, is_package)
            if target.startswith("tscd") and (layer_of(target) or 0) > own]


def modules():
    found = {}
    for package, root in PACKAGE_ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = package.split(".") + list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found.setdefault(".".join(parts[:-1] if is_package else parts), (path, is_package))
    for module, (path, is_package) in sorted(found.items()):
        yield module, path, is_package


def test_the_kernel_layer_is_seen():
    assert {"tscd.kernels", "tscd.kernels.extension", "tscd.kernels.scd", "tscd.ops.backends"} <= {
        m for m, _, _ in modules()}


def test_every_module_has_a_layer():
    assert [m for m, _, _ in modules() if layer_of(m) is None] == []


def test_no_module_imports_a_layer_above_it():
    found = [v for module, path, is_package in modules() for v in violations(path.read_text(), module, is_package)]
    assert found == []


@pytest.mark.parametrize("source,module", [
    ("from tscd.ops.backends import resolve", "tscd.kernels.gaussian"),
    ("from ..data.transforms import denormalize", "tscd.losses.objective"),
    ("def f():\n    from ..engine import trainer", "tscd.models.tscd"),
    ("import tscd.cli", "tscd.engine.trainer"),
])
def test_the_check_sees_upward_imports(source, module):
    assert len(violations(source, module)) == 1
