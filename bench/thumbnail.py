"""`thumbnail`: a bundled workflow's Templates card image (example_workflows/<name>.jpg beside it).

Default: what the workflow's own sampling makes of the trained dev model of its family (bench/dev.py:
the EPS UNet, or the flow MMDiT for a flow workflow such as sprint_fast_qwen_image), no checkpoint
needed: its ModelSamplingAuraFlow shift, SprintDynamicCFG and sampler settings as shipped
(bench/main_job.Pipeline reads them off the API twin) sample every class prompt against the empty prompt for a few seeds,
and the 16 px outputs are laid out as one labelled row per class, each tile scaled up without
smoothing. The dev model knows one size and the dev codec decodes, so a two-stage upscale or light
VAE in the graph is left out (said so). `--ckpt`: the workflow itself run as shipped (its prompt,
seed, steps and size) with your trained checkpoint, its output centre-cropped.
"""
import io
import json
import pathlib

from ..engines import metrics
from ..engines.files import atomic_write
from .host import WORKFLOWS
from .run import provide_checkpoint, provide_light_decoder, with_checkpoint

BACKGROUND, INK = (24, 24, 24), (220, 220, 220)
CKPT_ONLY = ("light_decoder", "size")
DEV_MODELS = {"eps": "EPS UNet (SD1.x)", "flow": "flow MMDiT (SD3)"}


def configure(parser):
    """`thumbnail`: render a bundled workflow's Templates card (trained dev model samples, or --ckpt: its own output)."""
    parser.add_argument("workflow", help="a bundled workflow's name (e.g. sprint_fast); with --ckpt also an API-format workflow file")
    parser.add_argument("--ckpt", help="a trained checkpoint the workflow's loader gets: render the workflow's own "
                                       "output (default: a grid of the trained dev model's samples, no checkpoint needed)")
    parser.add_argument("--light-decoder", help="--ckpt: taesd decoder file, for workflows with SprintLightVAEDecode")
    parser.add_argument("--size", type=int, help="--ckpt: image size to render at (default: the workflow's own)")
    parser.add_argument("--seeds", type=int, default=4, help="dev grid: seeds per class (the grid's columns)")
    parser.add_argument("--out", help="JPEG to write (default: example_workflows/<name>.jpg)")
    parser.add_argument("--side", type=int, default=512, help="thumbnail side in pixels")
    parser.set_defaults(func=command)


def square(image, side):
    """The image's centre square, scaled to side x side."""
    from PIL import Image
    w, h = image.size
    crop = min(w, h)
    box = ((w - crop) // 2, (h - crop) // 2, (w + crop) // 2, (h + crop) // 2)
    return image.crop(box).resize((side, side), Image.Resampling.LANCZOS)


def layout(side, rows, cols, tile=16):
    """Where a rows x cols grid of `tile`-px images goes on a side x side card, scaled by the
    largest whole factor that fits with a label band above each row: (label band boxes [rows],
    tile boxes [rows][cols]), boxes as (left, top, right, bottom)."""
    gap, band = max(2, side // 64), max(10, side // 32)
    scale = max(1, min((side - (cols + 1) * gap) // (cols * tile),
                       (side - (rows + 1) * gap - rows * band) // (rows * tile)))
    px = tile * scale
    left = (side - cols * px - (cols - 1) * gap) // 2
    top = (side - rows * (band + px) - (rows - 1) * gap) // 2
    bands, tiles = [], []
    for r in range(rows):
        y = top + r * (band + px + gap)
        bands.append((left, y, side - left, y + band))
        tiles.append([(left + c * (px + gap), y + band, left + c * (px + gap) + px, y + band + px) for c in range(cols)])
    return bands, tiles


def grid_card(images, labels, side):
    """A side x side RGB card of IMAGE rows [rows * cols, H, W, C] in [0, 1] (row-major, one row
    per label), nearest-upscaled into `layout`'s boxes, each row titled with its label."""
    from PIL import Image, ImageDraw, ImageFont
    rows = len(labels)
    cols = len(images) // rows
    bands, tiles = layout(side, rows, cols, images.shape[1])
    card = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(card)
    font = ImageFont.load_default(size=bands[0][3] - bands[0][1] - 2)
    pixels = (images.clamp(0, 1) * 255).round().byte().cpu().numpy()
    for r, label in enumerate(labels):
        draw.text((bands[r][0], bands[r][1]), label, fill=INK, font=font)
        for c, box in enumerate(tiles[r]):
            tile = Image.fromarray(pixels[r * cols + c]).convert("RGB")
            card.paste(tile.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.NEAREST), box[:2])
    return card


def write_jpeg(image, out):
    """`image` as a JPEG at `out`, written atomically (a card is whole or absent)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    with atomic_write(out) as f:
        f.write(buffer.getvalue())


def dev_render(name, seeds):
    """(IMAGE [classes * seeds, 16, 16, 3], the dev classifier's class accuracy on it):
    bundled workflow `name`'s model sampling, guidance and sampling on the trained dev model of its
    family (EPS UNet, or the flow MMDiT for a flow workflow), one batch with the workflow's own seed."""
    import torch
    from . import dev
    from .main_job import Pipeline
    from .quality import Setup
    bundled = sorted(p.stem for p in (WORKFLOWS / "api").glob("sprint_*.json"))
    if name not in bundled:
        raise SystemExit(f"{name}: the dev render knows the bundled workflows ({', '.join(bundled)}); "
                         f"for another workflow give --ckpt")
    p = Pipeline(name.removeprefix("sprint_"))
    setup = Setup(p.kind, seeds, None, noise_seed=0)
    vae = dev.comfy_vae(p.kind, dev.metadata(p.kind)["gain"])
    left_out = ("; its 2x two-stage upscale left out (the dev model knows one size)" if p.upscaled else "")
    print(f"rendering {name} on the trained dev {DEV_MODELS[p.kind]}: "
          f"{p.describe()}{left_out}; {len(dev.CLASSES)} classes x {seeds} seeds, decoded with the dev codec ...",
          flush=True)
    _, images = p(setup.model, setup.positive, setup.negative, {"samples": torch.zeros_like(setup.noise)},
                  p.inputs.get("seed", 0), vae)
    with torch.no_grad():
        accuracy = metrics.class_accuracy(setup.classifier(dev.to_gray(images)), setup.labels)
    return images, accuracy


def command(host, args):
    if args.ckpt:
        return ckpt_command(host, args)
    if given := [f"--{a.replace('_', '-')}" for a in CKPT_ONLY if getattr(args, a) is not None]:
        raise SystemExit(f"{', '.join(given)}: only with --ckpt (the default renders the trained dev model)")
    from . import dev
    name = pathlib.Path(args.workflow).stem
    images, accuracy = dev_render(name, args.seeds)
    out = pathlib.Path(args.out) if args.out else WORKFLOWS / f"{name}.jpg"
    write_jpeg(grid_card(images, dev.CLASSES, args.side), out)
    print(f"wrote {out} ({args.side}x{args.side}: {len(dev.CLASSES)} classes x {args.seeds} seeds; the dev classifier "
          f"names {accuracy:.0%} of them right, chance {1 / len(dev.CLASSES):.0%})")
    return 0


def ckpt_command(host, args):
    """The workflow as shipped with the user's checkpoint; its first saved image becomes the card."""
    from PIL import Image
    path = pathlib.Path(args.workflow)
    if not path.is_file():
        path = WORKFLOWS / "api" / f"{args.workflow}.json"
    prompt = with_checkpoint(json.loads(path.read_text()), provide_checkpoint(args.ckpt))
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage" and args.size:
            node["inputs"]["width"] = node["inputs"]["height"] = args.size
    if any(n["class_type"] == "SprintLightVAEDecode" for n in prompt.values()):
        if not args.light_decoder:
            raise SystemExit(f"{path.name} decodes with SprintLightVAEDecode: give --light-decoder taesd_decoder.pth")
        provide_light_decoder(args.light_decoder)
    print(f"rendering {path.name} with {args.ckpt} ...", flush=True)
    result = host.run(prompt)
    saved = [img for out in result.ui.values() for img in out.get("images", []) if img.get("type") == "output"]
    if not saved:
        raise SystemExit(f"{path.name} saved no image")
    image = Image.open(host.base_dir / "output" / saved[0]["subfolder"] / saved[0]["filename"]).convert("RGB")
    out = pathlib.Path(args.out) if args.out else WORKFLOWS / f"{path.stem}.jpg"
    write_jpeg(square(image, args.side), out)
    print(f"wrote {out} ({args.side}x{args.side} from the {image.size[0]}x{image.size[1]} output)")
    return 0
