"""`bench-prompt-cache`: a full-size CLIP-L text encoder (random weights: timings do not depend
on them) encodes vs memory hits, then a second process (a restart) reads the disk store.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import torch

from ..engines import prompt_cache
from ..nodes import prompt_cache as node
from . import synthetic
from .host import PACK_ROOT
from .meters import device_name, side_by_side, timed

TEXTS = ["a photograph of a lighthouse on a cliff at sunset, (detailed:1.2)", "a red fox in the snow, bokeh",
         "portrait of an old fisherman, 35mm film", "a bowl of ramen, studio lighting", "isometric city at night"]


def identical(a, b):
    return len(a) == len(b) and all(
        torch.equal(ca, cb) and ea.keys() == eb.keys()
        and all(torch.equal(ea[k], eb[k]) if isinstance(ea[k], torch.Tensor) else ea[k] == eb[k] for k in ea)
        for (ca, ea), (cb, eb) in zip(a, b))


def configure(parser):
    """`bench-prompt-cache`: prompt cache hit (memory, and disk after a restart) vs a CLIP-L encode."""
    parser.add_argument("--rounds", type=int, default=len(TEXTS), help="A/B rounds (one prompt each)")
    parser.add_argument("--store", help=argparse.SUPPRESS)     # set for the second process
    parser.set_defaults(func=command)


def command(host, args):
    tc = node
    second = args.store is not None
    folder = pathlib.Path(args.store or tempfile.mkdtemp(prefix="sprint-text-cache-"))
    clip = synthetic.sd15_clip(tiny=False, seed=0)   # same weights in both processes
    params = sum(p.numel() for p in clip.cond_stage_model.parameters())

    def fresh(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    def new_store():
        tc._cache = prompt_cache.PromptCache(256 << 20, folder, 1 << 30)
        return tc._cache

    fresh(TEXTS[0])                                                    # load + warm up
    first_identity, _ = timed(lambda: tc.weights_identity(clip.patcher))
    texts = (TEXTS * args.rounds)[:args.rounds]
    if not second:
        new_store()
        misses = [tc.encode(clip, t) for t in texts]                   # fills memory and disk
        exact = all(identical(got, fresh(t)) and how == "miss" for (got, how), t in zip(misses, texts))
        hits = [tc.encode(clip, t) for t in texts]
        exact &= all(identical(got, fresh(t)) and how == "memory" for (got, how), t in zip(hits, texts))
        t = side_by_side({"encode": lambda i: fresh(texts[i]), "hit": lambda i: tc.encode(clip, texts[i])}, args.rounds)
        print(f"ComfyUI {host.comfy_path} | CLIP-L text encoder, {params / 1e6:.0f} M params, random weights, "
              f"{device_name(clip.patcher.load_device)}, weights {next(clip.cond_stage_model.parameters()).dtype}")
        print(f"encode (CLIPTextEncode path) median {t['encode'] * 1e3:.1f} ms | memory hit median {t['hit'] * 1e3:.2f} ms "
              f"| speed-up {t['encode'] / t['hit']:.0f}x (bar 100x) | bit-identical: {exact}")
        print(f"weight identity of a newly loaded CLIP: {first_identity:.2f} s once per load (hashes the weights)")
        run = subprocess.run([sys.executable, str(PACK_ROOT), "--comfyui", str(host.comfy_path)] + (["--gpu"] if args.gpu else [])
                             + ["bench-prompt-cache", "--rounds", str(args.rounds), "--store", str(folder)],
                             capture_output=True, text=True)
        if run.returncode:
            print(run.stderr[-3000:])
            return run.returncode
        child = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"after a restart (second process): encode median {child['encode'] * 1e3:.1f} ms | disk hit median "
              f"{child['disk'] * 1e3:.2f} ms | speed-up {child['encode'] / child['disk']:.0f}x (bar 20x) | "
              f"bit-identical: {child['exact']} | its first lookup incl. weight identity {child['first'] * 1e3:.0f} ms")
        return 0 if exact and child["exact"] else 1
    # the second process: every lookup starts from an empty memory store, so it reads the disk
    t_first, (got, how) = timed(lambda: (new_store(), tc.encode(clip, texts[0]))[1])
    exact = how == "disk" and identical(got, fresh(texts[0]))
    for text in texts:
        got, how = new_store().get(tc.cache_key(clip, clip.tokenize(text)))
        exact &= how == "disk" and identical(got, fresh(text))
    t = side_by_side({"encode": lambda i: fresh(texts[i]), "disk": lambda i: (new_store(), tc.encode(clip, texts[i]))},
                     args.rounds)
    print(json.dumps({"encode": t["encode"], "disk": t["disk"], "exact": exact, "first": t_first + first_identity}))
    return 0
