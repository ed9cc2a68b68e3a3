"""Every public function and method of the library has a numpydoc docstring.

Public means: defined at module level or in a public class of a ``screader_db`` module, with a name
that does not start with an underscore. The CLI's commands are documented by their ``--help``
(tests/test_cli.py) and are left out here. A function that takes arguments has a ``Parameters``
section; one that returns a value has ``Returns`` (or ``Yields``). Properties need a one-line summary.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "screader_db"
SKIPPED_FILES = {"cli.py"}


def _returns_value(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    returns = node.returns
    return returns is not None and not (isinstance(returns, ast.Constant) and returns.value is None)


def _missing(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    decorators = [ast.unparse(d) for d in node.decorator_list]
    doc = ast.get_docstring(node) or ""
    if not doc:
        return ["docstring"]
    if any(d.endswith((".setter", "property")) for d in decorators) or "overload" in decorators:
        return []
    names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")]
    names += [a.arg for a in (node.args.vararg, node.args.kwarg) if a is not None]
    missing = []
    if names and "Parameters\n----------" not in doc:
        missing.append("Parameters")
    if _returns_value(node) and "Returns\n-------" not in doc and "Yields\n------" not in doc:
        missing.append("Returns")
    return missing


def _public_functions(body: list[ast.stmt], prefix: str = ""):
    for node in body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from _public_functions(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
            yield f"{prefix}{node.name}", node


def test_every_public_function_has_numpydoc_sections():
    gaps = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in SKIPPED_FILES:
            continue
        tree = ast.parse(path.read_text())
        for name, node in _public_functions(tree.body):
            missing = _missing(node)
            if missing:
                gaps.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}: {', '.join(missing)}")
    assert gaps == [], f"{len(gaps)} public functions lack numpydoc sections:\n" + "\n".join(gaps)
