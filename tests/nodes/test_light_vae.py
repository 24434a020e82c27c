"""SprintLightVAEDecode/Encode in the host: files from models/vae_approx, variant from the model,
ComfyUI's own TAESD as the reference, the real taef2 through the executor, clear errors."""
import pathlib
import shutil

import pytest
import torch

import harness

pytestmark = pytest.mark.host



@pytest.fixture(scope="module")
def vae_approx(host, synthetic, taesd_data, tmp_path_factory):
    """models/vae_approx with the real taef2 decoder + encoder and a random-weight taesd decoder
    (ComfyUI's own TAESD module's keys, i.e. the official layout). Files of the same names that
    other tests put there (e.g. the session's light decoder link) are set aside and put back."""
    import folder_paths
    folder = pathlib.Path(folder_paths.get_folder_paths("vae_approx")[0])
    folder.mkdir(parents=True, exist_ok=True)
    names = ("taef2_decoder.pth", "taef2_encoder.pth", "taesd_decoder.safetensors")
    aside = tmp_path_factory.mktemp("vae_approx_aside")
    kept = [name for name in names if (folder / name).is_symlink() or (folder / name).exists()]
    for name in kept:
        (folder / name).rename(aside / name)          # a link moves as a link
    for part in ("decoder", "encoder"):
        shutil.copy(taesd_data / f"taef2_{part}.pth", folder / f"taef2_{part}.pth")
    sd = synthetic.write_taesd_decoder(folder / "taesd_decoder.safetensors", seed=4)
    yield folder, sd
    for name in names:
        (folder / name).unlink()
    for name in kept:
        (aside / name).rename(folder / name)


def decode_graph(latent, **inputs):
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    node = g.node("SprintLightVAEDecode", samples=harness.source(g, "LATENT", {"samples": latent}), **inputs)
    g.node("PreviewImage", images=node.out(0))
    return g, node


def test_decode_follows_the_model_and_matches_comfyuis_taesd(host, vae_approx, tiny_model):
    """Variant from the MODEL's latent format (SD1.5 -> taesd); same image as ComfyUI's own TAESD VAE."""
    import comfy.sd
    _, sd = vae_approx
    latent = torch.randn(2, 4, 12, 10, generator=torch.Generator().manual_seed(0))
    from comfy_execution.graph_utils import GraphBuilder
    g = GraphBuilder()
    node = g.node("SprintLightVAEDecode", samples=harness.source(g, "LATENT", {"samples": latent}),
                  model=harness.source(g, "MODEL", tiny_model), precision="fp32")
    g.node("PreviewImage", images=node.out(0))
    image = host.run(g.finalize()).output(node.id)
    reference = comfy.sd.VAE(sd=sd).decode(latent)         # ComfyUI's TAESD path, both halves loaded
    assert image.shape == (2, 96, 80, 3) == reference.shape
    assert (image - reference.float()).abs().max() < 2e-2   # ComfyUI may decode in bf16 on this CPU
    loaded = [m.model for m in host.pack.nodes.light_vae.mm.current_loaded_models]
    assert any(type(p.model).__name__ == "Sequential" for p in loaded)     # through the memory manager


def test_real_taef2_round_trip_through_the_executor(host, vae_approx):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is a test requirement")
    from comfy_execution.graph_utils import GraphBuilder
    photo = torch.from_numpy(skimage_data.coffee()[:200, 100:420]).float()[None] / 255     # 200 x 320
    g = GraphBuilder()
    enc = g.node("SprintLightVAEEncode", pixels=harness.source(g, "IMAGE", photo), variant="taef2")
    dec = g.node("SprintLightVAEDecode", samples=enc.out(0))          # 128 channels: taef2 by itself
    tiled = g.node("SprintLightVAEDecode", samples=enc.out(0), tile_size=64)
    g.node("PreviewImage", images=dec.out(0))
    g.node("PreviewImage", images=tiled.out(0))
    result = host.run(g.finalize())
    latent, image = result.output(enc.id)["samples"], result.output(dec.id)
    assert latent.shape == (1, 128, 12, 20)                      # cropped to 192 x 320, FLUX.2 packed
    psnr = host.pack.engines.taesd.psnr(image, photo[:, 4:196])
    assert psnr > 27.0, psnr                                     # floor justified in tests/engines/test_taesd.py
    assert (result.output(tiled.id) - image).abs().max() < 1e-4


def test_missing_file_names_the_file_and_folder(host, vae_approx):
    g, _ = decode_graph(torch.randn(1, 16, 8, 8), variant="taesd3")
    with pytest.raises(Exception, match=r"taesd3_decoder\.pth .*models/vae_approx"):
        host.run(g.finalize())
    g, _ = decode_graph(torch.randn(1, 7, 8, 8))
    with pytest.raises(Exception, match="4, 16, 32 or 128 channels"):
        host.run(g.finalize())


def test_every_variant_loads_comfyuis_own_taesd_layout(host, tmp_path):
    """ComfyUI's comfy.taesd modules are built from the official files' layout: ours loads them."""
    import comfy.taesd.taesd as comfy_taesd
    T = host.pack.engines.taesd
    for channels in (4, 16):
        for kind, build, load in (("decoder", comfy_taesd.Decoder, T.load_decoder), ("encoder", comfy_taesd.Encoder, T.load_encoder)):
            path = tmp_path / f"{kind}{channels}.pth"
            torch.save({k: torch.randn(v.shape) for k, v in build(channels).state_dict().items()}, path)
            assert T.latent_channels(load(path)) == channels


@pytest.mark.parametrize("bf16, fp16, want", [(True, True, "bf16"), (False, True, "fp16"), (False, False, "fp32")])
def test_auto_precision_on_a_gpu_is_what_comfyuis_vae_would_pick(host, monkeypatch, bf16, fp16, want):
    """Only ComfyUI's capability queries are stood in for (a Hopper: bf16; a Turing: fp16; none)."""
    import comfy.model_management as mm
    light_vae = host.pack.nodes.light_vae
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, *a, **k: bf16)
    monkeypatch.setattr(mm, "should_use_fp16", lambda device=None, *a, **k: fp16)
    assert light_vae.pick_precision("auto", torch.device("cuda", 0)) == want
    assert light_vae.pick_precision("fp32", torch.device("cuda", 0)) == "fp32"
    assert light_vae.pick_precision("auto", torch.device("cpu")) in ("bf16", "fp32")     # the CPU rule, unchanged
