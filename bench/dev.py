"""Trained development models: the data they learn, their codec "VAE", their prompts, the classifier.

Four classes of 16x16 grayscale images from scikit-image's bundled data (installed with it, nothing
downloaded): LFW faces, brick and grass textures, and crops of its photographs. Two diffusion models
learn them in ComfyUI's own architecture classes: an EPS SD1.x UNet (comfy.supported_models.SD15,
32 channels, one level) and a rectified-flow SD3 MMDiT (comfy.supported_models.SD3, depth 2). A small CNN
trained on the same data scores their samples (class accuracy, features for a mini-FID).

The latent space is a fixed, exactly invertible block DCT of the pixels (2x2 blocks -> 4 channels
for the UNet, 4x4 -> 16 for the MMDiT, in 2x2 patches: 4 tokens), scaled so the latent format's scaled latents have unit
variance: no trained VAE error enters the metrics, and no VAE has to fit in the fixtures.
Prompts are fixed embeddings (one per class plus the empty prompt) standing where a text
encoder's output would: ComfyUI's loaders only build text encoders of full size (CLIP-L: 123 M
parameters), far beyond fixture size.

Made by `python <Sprint> train-dev-models` (bench/train_dev.py), shipped in bench/dev_models/.
"""
import json
import math
import pathlib

import numpy
import torch
import torch.nn.functional as F

FOLDER = pathlib.Path(__file__).resolve().parent / "dev_models"
CLASSES = ("face", "brick", "grass", "photo")
SIZE = 16                               # image side in pixels
TOKENS, WIDTH = 2, 64                   # prompt embedding: context [TOKENS, WIDTH], pooled [WIDTH]
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "coins", "rocket", "moon", "clock", "cat")
FILES = {"eps": "sprint_dev_eps.safetensors", "flow": "sprint_dev_flow.safetensors",
         "prompts": "sprint_dev_prompts.safetensors", "classifier": "sprint_dev_classifier.safetensors"}
BLOCK = {"eps": 2, "flow": 4}           # DCT block side: latent channels = BLOCK ** 2


# --- data -------------------------------------------------------------------------------------

def _gray(image):
    a = numpy.asarray(image, dtype=numpy.float64)
    if a.ndim == 3:
        a = a[..., :3] @ numpy.array([0.299, 0.587, 0.114])
    return torch.from_numpy(a / (255.0 if a.max() > 1 else 1.0)).float()


def _resized(img, scale):
    h, w = img.shape
    return F.interpolate(img[None, None], size=(round(h * scale), round(w * scale)), mode="area")[0, 0]


def _sources():
    """Per class, (train, held-out) lists of grayscale images in [0, 1]: held-out faces are other
    people's images, held-out texture/photo crops come from the bottom quarter of each picture."""
    import skimage.data as data
    faces = [_resized(_gray(f), 18 / 25) for f in data.lfw_subset()[:100]]   # the first 100 are faces

    def split(img):
        cut = img.shape[0] * 3 // 4
        return img[:cut], img[cut:]
    textures = {name: split(_resized(_gray(getattr(data, name)()), 0.125)) for name in ("brick", "grass")}
    photos = [split(_resized(_gray(getattr(data, name)()), 64 / min(_gray(getattr(data, name)()).shape)))
              for name in PHOTOS]
    return {"face": (faces[:80], faces[80:]), "brick": ([textures["brick"][0]], [textures["brick"][1]]),
            "grass": ([textures["grass"][0]], [textures["grass"][1]]),
            "photo": ([p[0] for p in photos], [p[1] for p in photos])}


def _crops(images, n, gen):
    out = torch.empty(n, 1, SIZE, SIZE)
    for i in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        y = int(torch.randint(img.shape[0] - SIZE + 1, (1,), generator=gen))
        x = int(torch.randint(img.shape[1] - SIZE + 1, (1,), generator=gen))
        crop = img[y:y + SIZE, x:x + SIZE]
        out[i, 0] = crop.flip(1) if torch.rand((), generator=gen) < 0.5 else crop
    return out


def dataset(split="train", per_class=1024, seed=0):
    """(images [N, 1, 16, 16] in [-1, 1], labels [N]): random crops (and flips) of each class's
    source images, deterministic for a seed; split "train" or "heldout"."""
    gen = torch.Generator().manual_seed(seed + (0 if split == "train" else 7919))
    sources = _sources()
    which = 0 if split == "train" else 1
    images = [_crops(sources[c][which], per_class, gen) for c in CLASSES]
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    return torch.cat(images) * 2 - 1, labels


# --- codec: the latent space -----------------------------------------------------------------

def dct_matrix(n):
    """Orthonormal DCT-II basis of n x n blocks as an [n^2, n^2] matrix (rows: basis images)."""
    k = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (k[None] + 0.5) * k[:, None] / n) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return torch.kron(c, c).float()


class BlockDCT(torch.nn.Module):
    """Pixels [B, 3, H, W] in [-1, 1] (gray: channel mean) <-> latents [B, n^2, H/n, W/n]: an
    orthonormal block DCT times `gain` (exactly invertible; decode returns gray as 3 channels)."""

    def __init__(self, block, gain):
        super().__init__()
        self.block, self.gain = block, float(gain)
        self.register_buffer("basis", dct_matrix(block))

    def encode(self, pixels):
        blocks = F.pixel_unshuffle(pixels.mean(1, keepdim=True), self.block)
        return torch.einsum("kc,bchw->bkhw", self.basis.to(pixels), blocks) * self.gain

    def decode(self, latent):
        blocks = torch.einsum("kc,bkhw->bchw", self.basis.to(latent), latent / self.gain)
        return F.pixel_shuffle(blocks, self.block).expand(-1, 3, -1, -1)


def codec_gain(kind, images, latent_format):
    """The gain that gives the latent format's scaled latents (process_in) unit variance on `images`."""
    raw = BlockDCT(BLOCK[kind], 1.0).encode(images.expand(-1, 3, -1, -1))
    return 1.0 / (latent_format.scale_factor * raw.std().item())


def comfy_vae(kind, gain):
    """The codec as a comfy.sd.VAE (VAEDecode/VAEEncode work on it): ComfyUI's pixel-space VAE
    object with its first stage replaced by the block DCT."""
    import comfy.sd
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    vae.first_stage_model = BlockDCT(BLOCK[kind], gain)
    vae.latent_channels = BLOCK[kind] ** 2
    vae.downscale_ratio = vae.upscale_ratio = BLOCK[kind]
    vae.memory_used_encode = vae.memory_used_decode = lambda shape, dtype: 64 * shape[2] * shape[3] * 4
    return vae


# --- classifier ------------------------------------------------------------------------------

class Classifier(torch.nn.Module):
    """A small CNN on 16x16 gray images in [-1, 1]: `features` (FEATURES-dim, for the mini-FID)
    and class logits."""
    FEATURES = 32

    def __init__(self):
        super().__init__()
        conv = lambda i, o: torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.GroupNorm(4, o),
                                                torch.nn.SiLU())
        self.body = torch.nn.Sequential(conv(1, 16), torch.nn.AvgPool2d(2), conv(16, 32), torch.nn.AvgPool2d(2),
                                        conv(32, 64), torch.nn.AvgPool2d(2), conv(64, 64))
        self.project = torch.nn.Linear(64, self.FEATURES)
        self.head = torch.nn.Linear(self.FEATURES, len(CLASSES))

    def features(self, images):
        return torch.tanh(self.project(self.body(images).mean((2, 3))))

    def forward(self, images):
        return self.head(self.features(images))


def to_gray(images):
    """ComfyUI IMAGE [B, H, W, C] in [0, 1] -> [B, 1, H, W] in [-1, 1], the classifier's input."""
    return images.movedim(-1, 1).mean(1, keepdim=True) * 2 - 1


# --- models in ComfyUI's classes --------------------------------------------------------------

def eps_unet_config():
    """SD1.x UNet family, 32 channels, one level with attention, context width WIDTH (the
    smallest the SD15 class builds: this CPU trains it in minutes)."""
    from .synthetic import sd15_unet_config
    return sd15_unet_config(model_channels=32, levels=1, res_blocks=1, context_dim=WIDTH)


def flow_unet_config():
    """SD3 MMDiT in the form model detection reads off its weights (depth 2 -> width 128, 2 heads)."""
    return {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
            "adm_in_channels": WIDTH, "num_patches": 4, "pos_embed_max_size": 2,
            "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": WIDTH, "out_features": 128}},
            "pos_embed_scaling_factor": None, "x_block_self_attn_layers": []}


def model_config(kind, unet_config=None):
    import comfy.supported_models
    cls = comfy.supported_models.SD15 if kind == "eps" else comfy.supported_models.SD3
    conf = cls(unet_config or (eps_unet_config() if kind == "eps" else flow_unet_config()))
    conf.set_inference_dtype(torch.float32, None)
    return conf


def base_model(kind, state_dict=None):
    """A comfy.model_base model (SD15 UNet or SD3 MMDiT) in float32 on CPU, with `state_dict`'s
    diffusion-model weights if given (loaded as ComfyUI's loaders do: load_model_weights)."""
    conf = model_config(kind)
    model = conf.get_model({})
    if state_dict is not None:
        model.load_model_weights(state_dict, "")
    return model


def models_option(parser):
    """`--dev-models`: the commands that score samplers on the dev models can take other ones."""
    parser.add_argument("--dev-models", type=pathlib.Path, help="folder of trained dev models to use instead of "
                        f"bench/dev_models/, with all of its files ({', '.join(FILES.values())}); e.g. another "
                        "seed's: `train-dev-models --seed 1 --out FOLDER`")


def models_folder(folder):
    """`folder` (None: the shipped one), checked to hold every fixture; SystemExit names what is missing."""
    folder = pathlib.Path(folder or FOLDER)
    if missing := [name for name in FILES.values() if not (folder / name).is_file()]:
        raise SystemExit(f"--dev-models {folder}: missing {', '.join(missing)} (train-dev-models --out writes "
                         f"them; copy the shipped ones for the models you do not retrain)")
    return folder


def metadata(kind, folder=None):
    """The training record stored in a fixture (seed, command, codec gain, classes, config)."""
    import safetensors
    path = pathlib.Path(folder or FOLDER) / FILES[kind]
    with safetensors.safe_open(str(path), "pt") as f:
        return {k: json.loads(v) for k, v in f.metadata().items()}


def load(kind, folder=None):
    """A shipped fixture as a state dict of float32 tensors."""
    import safetensors.torch
    sd = safetensors.torch.load_file(str(pathlib.Path(folder or FOLDER) / FILES[kind]))
    return {k: v.float() for k, v in sd.items()}


def model_patcher(kind, folder=None):
    """A MODEL of the trained EPS UNet or flow MMDiT. The flow model also loads with UNETLoader
    (models/diffusion_models); the 32-channel UNet does not, as ComfyUI detects SD1.x only at 320
    channels / context 768, so it is built from its config class here, as the loader would."""
    import comfy.model_management as mm
    import comfy.model_patcher
    return comfy.model_patcher.ModelPatcher(base_model(kind, load(kind, folder)), mm.get_torch_device(),
                                            mm.unet_offload_device())


def classifier(folder=None):
    net = Classifier()
    net.load_state_dict(load("classifier", folder))
    return net.eval()


def prompts(folder=None):
    """{prompt: (context [1, TOKENS, WIDTH], pooled [1, WIDTH])} for every class name and "" (the
    empty prompt, what condition dropout trained as unconditional)."""
    sd = load("prompts", folder)
    return {p: (sd[f"{p or 'empty'}.context"][None], sd[f"{p or 'empty'}.pooled"][None]) for p in (*CLASSES, "")}


def conditioning(prompt, folder=None, table=None):
    """A CONDITIONING for a class name (or "" for the empty prompt), as CLIPTextEncode would give."""
    context, pooled = (table or prompts(folder))[prompt]
    return [[context.clone(), {"pooled_output": pooled.clone()}]]
