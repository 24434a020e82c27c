"""Benchmarks of the two cheap speed-ups, each one command that prints every figure it claims.

`text-cache-bench`: a full-size CLIP-L text encoder (random weights: timings do not depend on
them) encodes vs memory hits, then a second process (a restart) reads the disk store.
`light-vae-bench`: ComfyUI's full SD VAE decode vs the light decoder on the same 64x64 latent,
side by side; taef2 round-trip PSNR on real photographs; tiled vs whole decode.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from .headless import PACK_ROOT, boot_for

TEXTS = ["a photograph of a lighthouse on a cliff at sunset, (detailed:1.2)", "a red fox in the snow, bokeh",
         "portrait of an old fisherman, 35mm film", "a bowl of ramen, studio lighting", "isometric city at night"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def side_by_side(runs, rounds):
    """Median seconds per named callable, run A B C A B C ... so load drifts hit all alike."""
    times = {name: [] for name in runs}
    for i in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(lambda: fn(i))[0])
    return {name: statistics.median(t) for name, t in times.items()}


def identical(a, b):
    return len(a) == len(b) and all(
        torch.equal(ca, cb) and ea.keys() == eb.keys()
        and all(torch.equal(ea[k], eb[k]) if isinstance(ea[k], torch.Tensor) else ea[k] == eb[k] for k in ea)
        for (ca, ea), (cb, eb) in zip(a, b))


def configure_text_cache_bench(parser):
    """`text-cache-bench`: prompt cache hit (memory, and disk after a restart) vs a CLIP-L encode."""
    parser.add_argument("--rounds", type=int, default=len(TEXTS), help="A/B rounds (one prompt each)")
    parser.add_argument("--store", help=argparse.SUPPRESS)     # set for the second process
    parser.set_defaults(func=text_cache_bench)


def text_cache_bench(args):
    host = boot_for(args)
    tc = host.module("nodes.text_cache")
    prompt_cache = host.module("engines.prompt_cache")
    second = args.store is not None
    folder = pathlib.Path(args.store or tempfile.mkdtemp(prefix="sprint-text-cache-"))
    clip = host.module("nodes.synthetic").sd15_clip(tiny=False, seed=0)   # same weights in both processes
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
              f"{torch.get_num_threads()} threads")
        print(f"encode (CLIPTextEncode path) median {t['encode'] * 1e3:.1f} ms | memory hit median {t['hit'] * 1e3:.2f} ms "
              f"| speed-up {t['encode'] / t['hit']:.0f}x (bar 100x) | bit-identical: {exact}")
        print(f"weight identity of a newly loaded CLIP: {first_identity:.2f} s once per load (hashes the weights)")
        run = subprocess.run([sys.executable, str(PACK_ROOT)] + (["--comfyui", str(args.comfyui)] if args.comfyui else [])
                             + ["text-cache-bench", "--rounds", str(args.rounds), "--store", str(folder)],
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


def configure_light_vae_bench(parser):
    """`light-vae-bench`: light decode vs ComfyUI's full SD VAE decode, taef2 PSNR on photographs."""
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds of the decode timings")
    parser.add_argument("--size", type=int, default=64, help="latent side (64 = a 512 px image)")
    shared = [p / "shared" / "data" / "taesd" for p in (PACK_ROOT.parent, PACK_ROOT.parent.parent)]
    parser.add_argument("--taef2", default=str(next((p for p in shared if p.is_dir()), shared[0])),
                        help="folder with taef2_encoder.pth and taef2_decoder.pth (the real weights)")
    parser.set_defaults(func=light_vae_bench)


def light_vae_bench(args):
    host = boot_for(args)
    import comfy.sd
    import comfy.utils
    import folder_paths
    synthetic, light_vae, taesd = host.module("nodes.synthetic"), host.module("nodes.light_vae"), host.module("engines.taesd")
    folder = pathlib.Path(folder_paths.get_folder_paths("vae_approx")[0])
    folder.mkdir(parents=True, exist_ok=True)
    sd = synthetic.taesd_state_dict(seed=1)
    comfy.utils.save_torch_file({k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith("taesd_decoder.")},
                                str(folder / "taesd_decoder.safetensors"))
    full = comfy.sd.VAE(sd=synthetic.kl_state_dict(synthetic.FULL_KL_DDCONFIG, seed=2))
    comfy_taesd = comfy.sd.VAE(sd=sd)
    latent = torch.randn(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(0))
    precision = light_vae.pick_precision("auto", light_vae.load("taesd", "decoder").load_device)
    runs = {"full VAE (VAEDecode)": lambda i: full.decode(latent),
            f"light, {precision}": lambda i: light_vae.run("taesd", "decoder", latent, 0, precision),
            "light, fp32": lambda i: light_vae.run("taesd", "decoder", latent, 0, "fp32"),
            "ComfyUI TAESD-as-VAE": lambda i: comfy_taesd.decode(latent)}
    for fn in runs.values():
        fn(0)                                                         # load, warm up
    t = side_by_side(runs, args.rounds)
    print(f"ComfyUI {host.comfy_path} | {args.size}x{args.size} latent -> {8 * args.size} px, random weights, "
          f"{torch.get_num_threads()} threads, medians of {args.rounds} A/B rounds")
    base = t["full VAE (VAEDecode)"]
    for name, s in t.items():
        print(f"  {name:<24} {s:7.2f} s  {base / s:6.1f}x" + ("  (bar 30x)" if name.startswith("light") else ""))

    huge = torch.randn(1, 4, 2 * args.size, 2 * args.size, generator=torch.Generator().manual_seed(1))
    whole = light_vae.run("taesd", "decoder", huge, 0, "fp32")
    t_tiled, tiled = timed(lambda: light_vae.run("taesd", "decoder", huge, args.size // 2, "fp32"))
    print(f"tiled ({args.size // 2}-cell tiles, halo 9) vs whole decode of a {2 * args.size}x{2 * args.size} latent: "
          f"max |diff| {(tiled - whole).abs().max():.1e}; tiled {t_tiled:.2f} s")

    taef2 = pathlib.Path(args.taef2)
    if not (taef2 / "taef2_decoder.pth").is_file():
        print(f"taef2 PSNR skipped: no taef2_decoder.pth in {taef2} (pass --taef2 DIR)")
        return 0
    import skimage.data
    decoder, encoder = taesd.load_decoder(taef2 / "taef2_decoder.pth"), taesd.load_encoder(taef2 / "taef2_encoder.pth")
    print("taef2 round trip (real weights), PSNR in dB:")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
        img = img[..., :img.shape[-2] // 16 * 16, :img.shape[-1] // 16 * 16]
        row = []
        for p in ("fp32", "bf16"):
            vae = taesd.TinyVAE("taef2", decoder, encoder, precision=p)
            row.append(f"{p} {taesd.psnr(vae.decode(vae.encode(img)), img):.2f}")
        print(f"  {name:<10} {tuple(img.shape[-2:])}: " + ", ".join(row))
    return 0
