"""`batch`: one API workflow over many variations (seeds, any input) on a Ray cluster.

Each Ray actor is one headless ComfyUI with Sprint on one device (a GPU, else CPU slots), its models
loaded once. Work is pulled: every actor holds one item at a time and gets the next when it hands
one back, so a slow or dead actor holds nothing else up; a dead actor's item goes to another.
Outputs and the manifest are written atomically by the driver; a re-run skips what is done.
"""
import csv
import json
import pathlib
import time

from ..engines.files import atomic_write

from . import host as hostlib, run

MANIFEST = "manifest.jsonl"
# The untimed warm-up run's seed: one no batch uses, since the executor would answer a repeated
# prompt from its cache with the warm-up's (deleted) files.
WARMUP_SEED = 2 ** 48


def _ray():
    try:
        import ray
    except ImportError:
        raise SystemExit("batch needs Ray, an optional dependency: pip install 'ray>=2.9'") from None
    return ray


def read_variations(path):
    """Rows of a JSONL or CSV file: {"node_id.input" or "title/class.input": value, "seed": n}."""
    text = pathlib.Path(path).read_text()
    if str(path).endswith(".csv"):
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(text.splitlines())]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _number(value):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def apply_variation(prompt, variation):
    """A copy of the prompt with the variation's seed and inputs set; a key names nodes by id,
    title or class."""
    variation = dict(variation)
    prompt = run.with_seed(prompt, variation.pop("seed")) if "seed" in variation else json.loads(json.dumps(prompt))
    for key, value in variation.items():
        node_key, _, name = key.rpartition(".")
        hits = [n for nid, n in prompt.items()
                if node_key in (nid, n["class_type"], n.get("_meta", {}).get("title"))]
        if not hits or not name:
            raise SystemExit(f"variation key {key!r}: no node with that id, title or class in the workflow")
        for node in hits:
            node["inputs"][name] = value
    return prompt


def items(args):
    """[(index, variation)] from --variations or --seeds A:B."""
    if args.variations:
        rows = read_variations(args.variations)
    else:
        start, _, stop = args.seeds.partition(":")
        rows = [{"seed": s} for s in range(int(start), int(stop))]
    return list(enumerate(rows))


def output_name(index, variation, k, suffix):
    """Deterministic per item: the same item always writes the same files."""
    return f"{index:05d}_seed{variation.get('seed', 'none')}_{k}{suffix}"


def worker_class(ray):
    """The Ray actor; defined here so Ray ships it by value (ComfyUI's pack module is not importable
    by name in a worker process)."""
    @ray.remote(max_restarts=0, max_task_retries=0)
    class Worker:
        def __init__(self, pack_root, comfy_path, ckpt, threads, cpu):
            import importlib.util
            import os
            import torch
            torch.set_num_threads(threads)
            if not os.path.exists(ckpt):
                raise FileNotFoundError(f"worker on {os.uname().nodename}: checkpoint {ckpt} not found")
            spec = importlib.util.spec_from_file_location("sprint_boot", f"{pack_root}/bench/host.py")
            boot = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(boot)
            self.host = boot.boot(comfy_path, cpu=cpu)
            self.ckpt_name = self.host.pack.bench.run.provide_checkpoint(ckpt)
            self.pid = os.getpid()

        def ready(self):
            return self.pid, self.ckpt_name

        def run(self, prompt, keep=True):
            import os
            import time
            for node in prompt.values():
                if node["class_type"] == "CheckpointLoaderSimple":
                    node["inputs"]["ckpt_name"] = self.ckpt_name
            start = time.perf_counter()
            result = self.host.run(prompt)
            files = []
            for out in result.ui.values():
                for img in out.get("images", []):
                    path = os.path.join(self.host.base_dir, img.get("type", "output"), img.get("subfolder", ""), img["filename"])
                    if keep:
                        with open(path, "rb") as f:
                            files.append((os.path.splitext(path)[1], f.read()))
                    os.unlink(path)
            return {"files": files, "seconds": time.perf_counter() - start, "pid": self.pid}
    return Worker


def load_manifest(out):
    path = out / MANIFEST
    if not path.exists():
        return {}
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {e["index"]: e for e in entries if all((out / f).exists() for f in e["files"])}


def write_manifest(out, done):
    with atomic_write(out / MANIFEST, "w") as f:
        for index in sorted(done):
            f.write(json.dumps(done[index]) + "\n")


def start_workers(ray, args, n, ckpt, warmup=None):
    """n actors, each ready (and, given a warm-up prompt, having run it once untimed so model loading
    is not counted as throughput)."""
    options = {"num_gpus": 1} if args.gpu else {"num_cpus": args.threads_per_worker}
    env = {"OMP_NUM_THREADS": str(args.threads_per_worker), "MKL_NUM_THREADS": str(args.threads_per_worker)}
    Worker = worker_class(ray)
    workers = [Worker.options(runtime_env={"env_vars": env}, **options).remote(
        str(hostlib.PACK_ROOT), str(args.comfy_path), ckpt, args.threads_per_worker, not args.gpu) for _ in range(n)]
    alive = []
    for i, w in enumerate(workers):
        try:
            ray.get(w.ready.remote())
            alive.append(w)
        except ray.exceptions.RayActorError as e:
            print(f"worker {i} failed to start: {_cause(e)}", flush=True)
    if not alive:
        raise SystemExit("no worker started (see above)")
    if warmup is not None:
        print(f"warming up {len(alive)} worker(s): one untimed run each loads the model", flush=True)
        ray.get([w.run.remote(warmup, keep=False) for w in alive])
    return alive


def _cause(error):
    text = str(error)
    for line in reversed(text.splitlines()):
        if "Error:" in line and "RayActorError" not in line and "ActorDiedError" not in line:
            return line.strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_batch(ray, args, prompt, todo, out, workers):
    """Pull loop: one in-flight item per worker; returns (items done, seconds)."""
    done = load_manifest(out)
    queue = [(i, v) for i, v in todo if i not in done]
    total, count, start = len(queue), 0, time.perf_counter()
    inflight = {}

    def give(w):
        if queue:
            index, variation = queue.pop(0)
            inflight[w.run.remote(apply_variation(prompt, variation))] = (w, index, variation)

    for w in workers:
        give(w)
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        w, index, variation = inflight.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
            queue.insert(0, (index, variation))
            workers.remove(w)
            print(f"\na worker left ({_cause(e)}); item {index} and the rest go to the {len(workers)} other(s)", flush=True)
            if not workers:
                raise SystemExit("every worker died; re-run to resume") from None
            for other in workers:
                if not any(x is other for x, _, _ in inflight.values()):
                    give(other)
            continue
        files = []
        for k, (suffix, data) in enumerate(result["files"]):
            name = output_name(index, variation, k, suffix)
            with atomic_write(out / name) as f:
                f.write(data)
            files.append(name)
        done[index] = {"index": index, "variation": variation, "seed": variation.get("seed"), "files": files,
                       "worker": result["pid"], "seconds": round(result["seconds"], 3)}
        write_manifest(out, done)
        count += 1
        elapsed = time.perf_counter() - start
        rate = count / elapsed
        print(f"\r{count}/{total} | {rate:.2f} items/s | ETA {(total - count) / rate:.0f} s ", end="", flush=True)
        give(w)
    if total:
        print(flush=True)
    return count, time.perf_counter() - start


def configure(parser):
    """`batch`: an API workflow over many variations (seeds, inputs) on Ray workers, resumable."""
    parser.add_argument("--workflow", help="API-format workflow JSON (default: the stock txt2img at --size)")
    parser.add_argument("--ckpt", help="checkpoint file, at the same path on every worker (default: random SD1.5)")
    parser.add_argument("--variations", help="JSONL or CSV: one item per row, keys 'node.input' (id, title or class) and 'seed'")
    parser.add_argument("--seeds", default="0:8", help="seed range A:B when no --variations (default 0:8)")
    parser.add_argument("--out", default="sprint-batch", help="output folder (manifest.jsonl + images); re-runs resume")
    parser.add_argument("--address", help="Ray cluster address (e.g. ray://head:10001 or auto); default: a local cluster")
    parser.add_argument("--workers", type=int, default=2, help="workers (actors) to start")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="torch threads (CPU slots) per worker")
    parser.add_argument("--size", type=int, default=256, help="image side for the stock workflow")
    parser.add_argument("--steps", type=int, default=4, help="steps for the stock workflow")
    parser.add_argument("--compare-workers", help="e.g. 1,2: time the same batch with each worker count, side by side")
    parser.set_defaults(func=command)


def command(host, args):
    ray = _ray()
    args.comfy_path = host.comfy_path
    ckpt_name = run.provide_checkpoint(args.ckpt)
    import folder_paths
    ckpt = str((pathlib.Path(folder_paths.get_folder_paths("checkpoints")[0]) / ckpt_name).resolve())
    prompt = (json.loads(pathlib.Path(args.workflow).read_text()) if args.workflow
              else run.stock_txt2img(ckpt_name, args.size, args.size, args.steps))
    todo = items(args)
    counts = [int(n) for n in args.compare_workers.split(",")] if args.compare_workers else [args.workers]
    try:
        if args.address:
            ray.init(address=args.address, log_to_driver=False, logging_level="WARNING")
        else:
            ray.init(num_cpus=max(counts) * args.threads_per_worker, include_dashboard=False,
                     log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError) as e:
        raise SystemExit(f"Ray cluster {args.address} unreachable: {str(e).splitlines()[0]}") from None
    rates = {}
    for n in counts:
        out = pathlib.Path(args.out) / (f"workers-{n}" if args.compare_workers else "")
        out.mkdir(parents=True, exist_ok=True)
        workers = start_workers(ray, args, n, ckpt, warmup=run.with_seed(prompt, WARMUP_SEED) if args.compare_workers else None)
        count, seconds = run_batch(ray, args, prompt, todo, out, workers)
        for w in workers:
            ray.kill(w)
        rates[n] = count / seconds if count else 0.0
        print(f"{n} worker(s): {count} new item(s) in {seconds:.1f} s ({rates[n]:.3f} items/s); "
              f"{len(load_manifest(out))}/{len(todo)} done in {out}", flush=True)
    if len(counts) > 1 and rates[counts[0]]:
        print(f"throughput {counts[-1]} vs {counts[0]} worker(s): {rates[counts[-1]] / rates[counts[0]]:.2f}x")
    ray.shutdown()
    return 0
