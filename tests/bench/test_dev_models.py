"""The trained dev models (bench/dev_models) load through ComfyUI and are trained: guided samples
of every class, made by KSampler in the real executor, are recognised by the classifier well above
chance. Plus the codec's exactness and the two commands that make and measure them, shrunk."""
import pathlib
import re

import pytest
import torch

import harness
from sprint.bench import dev


def GraphBuilder():
    from comfy_execution.graph_utils import GraphBuilder   # importable once the host booted
    return GraphBuilder()

pytestmark = pytest.mark.host
SEEDS = 4                              # per class
CHANCE = 1 / len(dev.CLASSES)


def guided_rows(kind):
    """(positive, negative, empty latent, labels) for SEEDS rows of every class."""
    table = dev.prompts()
    labels = torch.arange(len(dev.CLASSES)).repeat_interleave(SEEDS)
    context = torch.cat([table[c][0] for c in dev.CLASSES]).repeat_interleave(SEEDS, 0)
    pooled = torch.cat([table[c][1] for c in dev.CLASSES]).repeat_interleave(SEEDS, 0)
    empty = table[""]
    positive = [[context, {"pooled_output": pooled}]]
    negative = [[empty[0].expand(len(labels), -1, -1).clone(), {"pooled_output": empty[1].expand(len(labels), -1).clone()}]]
    side = dev.SIZE // dev.BLOCK[kind]
    latent = {"samples": torch.zeros(len(labels), dev.BLOCK[kind] ** 2, side, side)}
    return positive, negative, latent, labels


def sample_and_score(host, kind, model_node, graph, scheduler):
    positive, negative, latent, labels = guided_rows(kind)
    k = graph.node("KSampler", model=model_node, seed=3, steps=12, cfg=3.0, sampler_name="dpmpp_2m",
                   scheduler=scheduler, positive=harness.source(graph, "CONDITIONING", positive),
                   negative=harness.source(graph, "CONDITIONING", negative),
                   latent_image=harness.source(graph, "LATENT", latent), denoise=1.0)
    vae = harness.source(graph, "VAE", dev.comfy_vae(kind, dev.metadata(kind)["gain"]))
    decoded = graph.node("VAEDecode", samples=k.out(0), vae=vae)
    graph.node("PreviewImage", images=decoded.out(0))
    result = host.run(graph.finalize())
    images = result.output(decoded.id)
    assert images.shape == (len(labels), dev.SIZE, dev.SIZE, 3)
    with torch.no_grad():
        predicted = dev.classifier()(dev.to_gray(images)).argmax(1)
    return (predicted == labels).float().mean().item(), predicted


def test_flow_model_loads_with_unet_loader_and_its_samples_are_recognised(host):
    import folder_paths
    target = pathlib.Path(folder_paths.get_folder_paths("diffusion_models")[0])
    target.mkdir(parents=True, exist_ok=True)
    link = target / dev.FILES["flow"]
    if not link.exists():
        link.symlink_to(dev.FOLDER / dev.FILES["flow"])
    graph = GraphBuilder()
    loader = graph.node("UNETLoader", unet_name=link.name, weight_dtype="default")
    accuracy, predicted = sample_and_score(host, "flow", loader.out(0), graph, "simple")
    model = host.nodes.UNETLoader().load_unet(link.name, "default")[0]
    assert type(model.model).__name__ == "SD3"            # detected from the weights as SD3 (flow)
    loaded = model.model.diffusion_model.state_dict()
    shipped = dev.load("flow")
    assert set(loaded) == set(shipped) and all(torch.equal(loaded[k], shipped[k]) for k in shipped)
    assert accuracy >= 2 * CHANCE, (accuracy, predicted)


def test_eps_model_samples_through_ksampler_are_recognised(host):
    model = dev.model_patcher("eps")
    assert type(model.model).__name__ == "BaseModel" and model.model.model_type.name == "EPS"
    graph = GraphBuilder()
    accuracy, predicted = sample_and_score(host, "eps", harness.source(graph, "MODEL", model), graph, "karras")
    assert accuracy >= 2 * CHANCE, (accuracy, predicted)


def test_classifier_recognises_held_out_real_images(host):
    images, labels = dev.dataset("heldout", 64, seed=1)
    with torch.no_grad():
        accuracy = (dev.classifier()(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.8


def test_codec_is_exactly_invertible(host):
    images, _ = dev.dataset("heldout", 4)
    for kind, block in dev.BLOCK.items():
        codec = dev.BlockDCT(block, 3.0)
        latent = codec.encode(images.expand(-1, 3, -1, -1))
        assert latent.shape == (len(images), block * block, dev.SIZE // block, dev.SIZE // block)
        assert torch.allclose(codec.decode(latent)[:, :1], images, atol=1e-5)
        assert torch.allclose(latent.pow(2).sum((1, 2, 3)), 9.0 * images.pow(2).sum((1, 2, 3)), rtol=1e-4)  # orthonormal


def test_train_dev_models_command_writes_loadable_fixtures(host, tmp_path):
    harness.cli(host, "train-dev-models", "--out", tmp_path, "--eps-steps", 2, "--flow-steps", 2,
                "--classifier-steps", 2, "--batch", 4, "--classifier-batch", 4)
    for kind in ("eps", "flow"):
        assert dev.model_patcher(kind, tmp_path).model.diffusion_model is not None
    assert set(dev.prompts(tmp_path)) == set(dev.CLASSES) | {""}


def test_bench_quality_toy_run(host):
    out = harness.cli(host, "bench-quality", "--toy").stdout
    for needle in ("reference", "ipndm karras 8 steps", "sprint balanced", "mini-FID", "accuracy", "SSIM",
                   "early stop, 20 calls allowed", "tol 0.05", "achieved error grows with the tolerance"):
        assert needle in out, (needle, out[-3000:])
    # every Sprint row and every tolerance is set against the peers' calls at equal error
    rows = [r for r in out.splitlines() if r.startswith(("sprint ", "tol "))]
    assert len(rows) >= 2 * (3 + 1 + 1 + 6), out[-3000:]
    equal_error = re.compile(r"(calls for this error \(.+\): (<= )?|measured calls: > )\d+\.\d\dx$")
    assert all(equal_error.search(r) for r in rows), [r for r in rows if not equal_error.search(r)]
