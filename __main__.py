"""`python path/to/Sprint <command> ...`: Sprint's headless job (see README). Boots ComfyUI itself."""
import importlib.util
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent
# ComfyUI's top-level `nodes` module must not be shadowed by Sprint's nodes/ package.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != root]
spec = importlib.util.spec_from_file_location("sprint", root / "__init__.py", submodule_search_locations=[str(root)])
sys.modules["sprint"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["sprint"])

from sprint.nodes import headless  # noqa: E402

sys.exit(headless.main())
