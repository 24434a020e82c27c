"""`thumbnail`: a bundled workflow's own output as its Templates card image (<name>.jpg beside it).

Runs the workflow's API twin as shipped (its prompt, seed, steps and size), with only the checkpoint
(and light decoder) given, then centre-crops and scales the saved image. A trained checkpoint is
required: a random-weight stand-in would put noise on the card.
"""
import json
import pathlib

from .host import WORKFLOWS
from .run import provide_checkpoint, provide_light_decoder, with_checkpoint


def configure(parser):
    """`thumbnail`: render a bundled workflow's output to its Templates thumbnail."""
    parser.add_argument("workflow", help="a bundled workflow's name (e.g. sprint_fast) or an API-format workflow file")
    parser.add_argument("--ckpt", required=True, help="a trained checkpoint the workflow's loader gets")
    parser.add_argument("--light-decoder", help="taesd decoder file, for workflows with SprintLightVAEDecode")
    parser.add_argument("--out", help="JPEG to write (default: example_workflows/<name>.jpg)")
    parser.add_argument("--side", type=int, default=512, help="thumbnail side in pixels")
    parser.add_argument("--size", type=int, help="image size to render at (default: the workflow's own)")
    parser.set_defaults(func=command)


def square(image, side):
    """The image's centre square, scaled to side x side."""
    from PIL import Image
    w, h = image.size
    crop = min(w, h)
    box = ((w - crop) // 2, (h - crop) // 2, (w + crop) // 2, (h + crop) // 2)
    return image.crop(box).resize((side, side), Image.Resampling.LANCZOS)


def command(host, args):
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
    square(image, args.side).save(out, quality=88)
    print(f"wrote {out} ({args.side}x{args.side} from the {image.size[0]}x{image.size[1]} output)")
    return 0
