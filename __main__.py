"""`python path/to/Sprint <command> ...`: Sprint's headless jobs (see README). Boots ComfyUI itself.

Only bench/host.py is loaded before ComfyUI boots; ComfyUI then loads the pack as a custom node,
and the command runs inside that copy (bench.cli), so one copy of the pack is ever in use.
"""
import importlib.util
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent
# ComfyUI's top-level `nodes` module must not be shadowed by Sprint's nodes/ package.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != root]
spec = importlib.util.spec_from_file_location("sprint_boot", root / "bench" / "host.py")
boot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(boot)

argv = sys.argv[1:]
comfyui, cpu, attention = boot.boot_args(argv)
try:
    host = boot.boot(comfyui, cpu=cpu, attention=attention)
except boot.HostNotFound as e:
    sys.exit(str(e))
sys.exit(host.pack.bench.cli.main(host, argv))
