"""`train-dev-models`: train the development models of bench/dev.py and write them as fixtures.

Seeded and deterministic on one machine (same torch, same thread count): the EPS UNet (DDPM
epsilon loss on ComfyUI's SD1.x discrete schedule), the flow MMDiT (rectified flow, velocity loss,
logit-normal t as SD3), both through ComfyUI's own apply_model, with the class prompt dropped to
the empty prompt 15 % of the time (so CFG and negative prompts mean something); then the classifier.
Weights are kept as an exponential moving average and saved in float16, with their training record.
"""
import json
import pathlib
import time

import torch
import torch.nn.functional as F

from ..engines.files import atomic_save
from . import dev
from .synthetic import init_weights_

DROPOUT = 0.15
EMA = 0.995


def configure(parser):
    """`train-dev-models`: train the trained-model yardsticks (EPS UNet, flow MMDiT, classifier) into fixtures."""
    parser.add_argument("--out", default=str(dev.FOLDER), help="folder to write the fixtures to")
    parser.add_argument("--eps-steps", type=int, default=600, help="optimizer steps of the EPS UNet")
    parser.add_argument("--flow-steps", type=int, default=1000, help="optimizer steps of the flow MMDiT")
    parser.add_argument("--classifier-steps", type=int, default=600, help="optimizer steps of the classifier")
    parser.add_argument("--batch", type=int, default=32, help="images per step of the diffusion models")
    parser.add_argument("--classifier-batch", type=int, default=64, help="images per step of the classifier")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, initial weights, noise and dropout")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it; on a busy CPU one thread is ~10x faster than two)")
    parser.add_argument("--only", choices=("eps", "flow", "classifier"), help="train one model only")
    parser.set_defaults(func=command)


def save(path, sd, record):
    import safetensors.torch
    sd = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous() for k, v in sd.items()}
    meta = {k: json.dumps(v) for k, v in record.items()}
    atomic_save(path, lambda tmp: safetensors.torch.save_file(sd, str(tmp), metadata=meta))


def make_prompts(seed):
    """Fixed "text embeddings" for every class and the empty prompt (unit-variance, seeded)."""
    g = torch.Generator().manual_seed(seed + 101)
    sd = {}
    for p in (*dev.CLASSES, "empty"):
        sd[f"{p}.context"] = torch.randn(dev.TOKENS, dev.WIDTH, generator=g)
        sd[f"{p}.pooled"] = torch.randn(dev.WIDTH, generator=g)
    return sd


def noised(kind, model, x0, gen):
    """(x, sigma, target fn) for one training batch: the noisy input, its noise level, and the
    loss's target from ComfyUI's denoised output (epsilon for EPS, velocity for flow)."""
    noise = torch.randn(x0.shape, generator=gen)
    ms = model.model_sampling
    if kind == "eps":
        t = torch.randint(0, len(ms.sigmas), (x0.shape[0],), generator=gen)
        sigma = ms.sigmas[t].float()
        s = sigma.reshape(-1, 1, 1, 1)
        x = x0 + s * noise
        return x, sigma, lambda denoised: F.mse_loss((x - denoised) / s, noise)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen)).clamp(1e-3, 1 - 1e-3)
    s = sigma.reshape(-1, 1, 1, 1)
    x = (1 - s) * x0 + s * noise
    return x, sigma, lambda denoised: F.mse_loss((x - denoised) / s, noise - x0)


def train_diffusion(kind, images, labels, table, args, steps):
    """Train one diffusion model for `steps` steps; returns (state dict of the EMA weights, record)."""
    torch.manual_seed(args.seed)
    model = dev.base_model(kind)
    init_weights_(model.diffusion_model, args.seed + (1 if kind == "eps" else 2))
    if kind == "flow":      # a buffer the MMDiT leaves uninitialised (checkpoints carry it)
        model.diffusion_model.pos_embed.copy_(0.1 * torch.randn(model.diffusion_model.pos_embed.shape,
                                                                 generator=torch.Generator().manual_seed(args.seed + 4)))
    model.train()
    gain = dev.codec_gain(kind, images, model.latent_format)
    codec = dev.BlockDCT(dev.BLOCK[kind], gain)
    with torch.no_grad():
        latents = model.latent_format.process_in(codec.encode(images.expand(-1, 3, -1, -1)))
    params = list(model.diffusion_model.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(args.seed + 11)
    contexts = torch.stack([table[f"{c}.context"] for c in (*dev.CLASSES, "empty")])
    pooled = torch.stack([table[f"{c}.pooled"] for c in (*dev.CLASSES, "empty")])
    began, losses = time.perf_counter(), []
    for step in range(steps):
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        cls = torch.where(torch.rand(args.batch, generator=gen) < DROPOUT, len(dev.CLASSES), labels[idx])
        x, sigma, loss_of = noised(kind, model, latents[idx], gen)
        extra = {"y": pooled[cls]} if kind == "flow" else {}
        loss = loss_of(model.apply_model(x, sigma, c_crossattn=contexts[cls], **extra))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(EMA, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            print(f"  {kind} step {step + 1}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    seconds = time.perf_counter() - began
    record = {"kind": kind, "gain": gain, "seconds": round(seconds, 1), "final_loss": sum(losses[-200:]) / len(losses[-200:]),
              "classes": list(dev.CLASSES)}
    return model.diffusion_model.state_dict(), record


def train_classifier(images, labels, args):
    torch.manual_seed(args.seed + 3)
    net = init_weights_(dev.Classifier(), args.seed + 3)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed + 13)
    began = time.perf_counter()
    for step in range(args.classifier_steps):
        idx = torch.randint(len(images), (args.classifier_batch,), generator=gen)
        batch = images[idx] + 0.05 * torch.randn(images[idx].shape, generator=gen)   # robust to sampler noise
        loss = F.cross_entropy(net(batch), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    held, held_labels = dev.dataset("heldout", 256, args.seed)
    with torch.no_grad():
        accuracy = (net(held).argmax(1) == held_labels).float().mean().item()
    seconds = time.perf_counter() - began
    print(f"  classifier: held-out accuracy {accuracy:.3f} ({seconds:.0f} s)", flush=True)
    return net.state_dict(), {"kind": "classifier", "heldout_accuracy": accuracy, "seconds": round(seconds, 1),
                              "classes": list(dev.CLASSES)}


def command(host, args):
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"seed": args.seed, "threads": args.threads, "batch": args.batch, "torch": torch.__version__,
              "command": f"python <Sprint> train-dev-models --seed {args.seed} --eps-steps {args.eps_steps} --flow-steps {args.flow_steps} "
                         f"--classifier-steps {args.classifier_steps} --batch {args.batch} "
                         f"--classifier-batch {args.classifier_batch} --threads {args.threads}"}
    images, labels = dev.dataset("train", 1024, args.seed)
    print(f"data: {len(images)} images of {len(dev.CLASSES)} classes {dev.CLASSES}, {dev.SIZE}x{dev.SIZE} gray", flush=True)
    table = make_prompts(args.seed)
    save(out / dev.FILES["prompts"], table, dict(common, kind="prompts"))
    for kind in ("eps", "flow"):
        if args.only in (None, kind):
            steps = args.eps_steps if kind == "eps" else args.flow_steps
            sd, record = train_diffusion(kind, images, labels, table, args, steps)
            save(out / dev.FILES[kind], sd, dict(common, steps=steps, dropout=DROPOUT, ema=EMA, **record))
            print(f"{kind}: {record['seconds']:.0f} s, final loss {record['final_loss']:.4f}", flush=True)
    if args.only in (None, "classifier"):
        sd, record = train_classifier(images, labels, args)
        save(out / dev.FILES["classifier"], sd, dict(common, steps=args.classifier_steps, **record))
    for name in dev.FILES.values():
        if (out / name).exists():
            print(f"{out / name}: {(out / name).stat().st_size / 1e6:.2f} MB")
    return 0
