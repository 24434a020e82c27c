"""`bench-light-vae`: ComfyUI's full SD VAE decode vs the light decoder on the same latent, side by
side; tiled vs whole decode; taef2 round-trip PSNR on real photographs (the real weights).
"""
import pathlib

import torch

from ..engines import taesd
from ..nodes import light_vae
from . import synthetic
from .host import shared_taesd
from .meters import device_name, side_by_side, timed


def configure(parser):
    """`bench-light-vae`: light decode vs ComfyUI's full SD VAE decode, taef2 PSNR on photographs."""
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds of the decode timings")
    parser.add_argument("--size", type=int, default=64, help="latent side (64 = a 512 px image)")
    parser.add_argument("--taef2", default=str(shared_taesd() or "shared/data/taesd"),
                        help="folder with taef2_encoder.pth and taef2_decoder.pth (the real weights)")
    parser.set_defaults(func=command)


def command(host, args):
    import comfy.sd
    import folder_paths
    folder = pathlib.Path(folder_paths.get_folder_paths("vae_approx")[0])
    sd = synthetic.taesd_state_dict(seed=1)
    synthetic.save(synthetic.taesd_decoder_file(sd), folder / "taesd_decoder.safetensors")
    full = comfy.sd.VAE(sd=synthetic.kl_state_dict(synthetic.FULL_KL_DDCONFIG, seed=2))
    comfy_taesd = comfy.sd.VAE(sd=sd)
    latent = torch.randn(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(0))
    device = light_vae.load("taesd", "decoder").load_device
    precision = light_vae.pick_precision("auto", device)
    runs = {"full VAE (VAEDecode)": lambda i: full.decode(latent),
            f"light, {precision}": lambda i: light_vae.run("taesd", "decoder", latent, 0, precision),
            "light, fp32": lambda i: light_vae.run("taesd", "decoder", latent, 0, "fp32"),
            "ComfyUI TAESD-as-VAE": lambda i: comfy_taesd.decode(latent)}
    t = side_by_side(runs, args.rounds, warmup=True)                 # the warm-up loads the models
    print(f"ComfyUI {host.comfy_path} | {args.size}x{args.size} latent -> {8 * args.size} px, random weights, "
          f"{device_name(device)}, full VAE in {full.vae_dtype}, light auto precision {precision}, "
          f"medians of {args.rounds} A/B rounds")
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
    decoder = taesd.load_decoder(taef2 / "taef2_decoder.pth").to(device)
    encoder = taesd.load_encoder(taef2 / "taef2_encoder.pth").to(device)
    print(f"taef2 round trip (real weights) on {device_name(device)}, PSNR in dB:")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
        img = img[..., :img.shape[-2] // 16 * 16, :img.shape[-1] // 16 * 16].to(device)
        row = []
        for p in ("fp32", "bf16"):
            vae = taesd.TinyVAE("taef2", decoder, encoder, precision=p)
            row.append(f"{p} {taesd.psnr(vae.decode(vae.encode(img)), img):.2f}")
        print(f"  {name:<10} {tuple(img.shape[-2:])}: " + ", ".join(row))
    return 0
