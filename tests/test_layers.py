"""The package's layers: no upward import, no cycle, no private name imported; the documented graph is true."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_its_layers(graph_tool):
    assert graph_tool.problems() == []
    assert "  leakage -> attributes, _utils, .attackers, .group_sums, .inputs" in graph_tool.tree()  # the module-level view is drawn too


def test_the_architecture_doc_shows_the_current_graph(graph_tool):
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert graph_tool.units_tree() in text, "run: python tools/import_graph.py --write-doc"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / "bafo_pipeline" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_the_check_finds_upward_imports_cycles_private_names_and_forbidden_units(graph_tool, tmp_path):
    _write(tmp_path, {
        "__init__.py": "",
        "_utils/__init__.py": "",
        "_utils/device.py": "def _helper(): pass\n",
        "attributes.py": "def f():\n    from .pipeline import run  # lazy, still an arrow\n",
        "pipeline/__init__.py": "from .a import run\n",
        "pipeline/a.py": "from .b import x\nrun = 1\n",
        "pipeline/b.py": "from .a import run\nx = 2\n",
        "io/__init__.py": "from .._utils.device import _helper\n",
        "audits/__init__.py": "from bafo_pipeline.transformers import model\n",
        "transformers/__init__.py": "",
        "transformers/model.py": "",
    })
    found = "\n".join(graph_tool.problems(tmp_path))
    assert "attributes.py:2: upward import of bafo_pipeline.pipeline" in found
    assert "import cycle: bafo_pipeline.pipeline.a -> bafo_pipeline.pipeline.b -> bafo_pipeline.pipeline.a" in found
    assert "io/__init__.py:1: imports the private name _helper of bafo_pipeline._utils.device" in found
    assert "audits must not import transformers" in found
    clean = tmp_path / "clean"
    _write(clean, {"__init__.py": "from .io import x\n", "io/__init__.py": "from .._utils import y\nx = 1\n",
                   "_utils/__init__.py": "y = 2\n"})
    assert graph_tool.problems(clean) == []


def test_docstrings_cite_only_names_that_exist():
    import importlib
    import re

    pattern = re.compile(r":(?:func|class|meth|mod|attr):`~?(bafo_pipeline(?:\.\w+)+)`")
    missing = []
    for path in sorted((ROOT / "bafo_pipeline").rglob("*.py")):
        for reference in pattern.findall(path.read_text(encoding="utf-8")):
            parts = reference.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    target = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                try:
                    for name in parts[cut:]:
                        target = getattr(target, name)
                except AttributeError:
                    missing.append(f"{path.relative_to(ROOT)}: {reference}")
                break
    assert missing == []
