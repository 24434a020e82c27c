"""TAESD family: official key layouts load, the real taef2 weights round-trip real photographs,
tiled and chunked runs equal whole ones."""
import pathlib
import pickle

import pytest
import torch

from sprint.engines import taesd as T

# Measured round-trip PSNR of the real taef2 on the 256 px centre crops below: astronaut 29.6,
# coffee 31.5, chelsea 30.5 dB (fp32; bf16 within 0.05 dB). Broken wiring lands near 20 dB or
# below (no GroupNorm branch: 20.0, scrambled 2x2 packing: 17.0; see the test that checks it), so
# 27 dB separates working from broken with ~2.5 dB of room for other CPUs' kernels and precisions.
PSNR_FLOOR_DB = 27.0


def official_keys(kind, latent_channels, pooled):
    """{key: shape} of madebyollin/taesd's files: nn.Sequential indices, written out by hand."""
    keys = {}

    def conv(i, n_in, n_out, bias=True):
        keys[f"{i}.weight"] = (n_out, n_in, 3, 3)
        if bias:
            keys[f"{i}.bias"] = (n_out,)

    def block(i, pool=False):
        for j in (0, 2, 4):
            keys[f"{i}.conv.{j}.weight"], keys[f"{i}.conv.{j}.bias"] = (64, 64, 3, 3), (64,)
        if pool:
            keys.update({f"{i}.pool.0.weight": (256, 64, 1, 1), f"{i}.pool.1.weight": (256,),
                         f"{i}.pool.1.bias": (256,), f"{i}.pool.3.weight": (64, 256, 1, 1)})

    if kind == "decoder":
        conv(1, latent_channels, 64)
        for i in (3, 4, 5):
            block(i, pooled)
        for i in (8, 9, 10, 13, 14, 15, 18):
            block(i)
        for i in (7, 12, 17):
            conv(i, 64, 64, bias=False)
        conv(19, 64, 3)
    else:
        conv(0, 3, 64)
        for i in (1, 3, 4, 5, 7, 8, 9):
            block(i)
        for i in (11, 12, 13):
            block(i, pooled)
        for i in (2, 6, 10):
            conv(i, 64, 64, bias=False)
        conv(14, 64, latent_channels)
    return keys


def random_state_dict(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) / (s[1] * s[2] * s[3]) ** 0.5 if len(s) == 4 else
                torch.ones(s) if ".pool.1.weight" in k else torch.zeros(s)) for k, s in keys.items()}


@pytest.mark.parametrize("variant", list(T.VARIANTS))
@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_every_variant_loads_its_official_layout(variant, kind, tmp_path):
    v = T.VARIANTS[variant]
    path = tmp_path / f"{variant}_{kind}.pth"
    torch.save(random_state_dict(official_keys(kind, v.latent_channels, v.pooled)), path)
    net = (T.load_decoder if kind == "decoder" else T.load_encoder)(path)
    assert T.latent_channels(net) == v.latent_channels
    vae = T.TinyVAE(variant, **{kind: net})
    if kind == "decoder":
        z = torch.randn(1, v.latent_channels * (4 if v.packed else 1), 4, 4)
        assert vae.decode(z).shape == (1, 3, 64 if v.packed else 32, 64 if v.packed else 32)
    else:
        assert vae.encode(torch.rand(1, 3, 32, 32)).shape == ((1, 128, 2, 2) if v.packed else (1, v.latent_channels, 4, 4))


def test_real_taef2_files_match_the_architecture(taesd_data):
    for kind in ("decoder", "encoder"):
        sd = torch.load(taesd_data / f"taef2_{kind}.pth", map_location="cpu", weights_only=True)
        assert {k: tuple(t.shape) for k, t in sd.items()} == official_keys(kind, 32, pooled=True)


def test_wrong_layout_and_pickled_code_are_refused(tmp_path):
    bad = tmp_path / "bad_decoder.pth"
    torch.save({"decoder.1.weight": torch.zeros(64, 4, 3, 3)}, bad)
    with pytest.raises(ValueError, match="official key layout"):
        T.load_decoder(bad)
    evil = tmp_path / "evil_decoder.pth"
    with open(evil, "wb") as f:     # a pickle that would run code when unpickled freely
        pickle.dump({"1.weight": _Boom()}, f)
    with pytest.raises(pickle.UnpicklingError):
        T.load_decoder(evil)


class _Boom:
    def __reduce__(self):
        return (pytest.fail, ("weights_only loading ran pickled code",))


def test_safetensors_file_loads_the_same(tmp_path):
    import safetensors.torch
    sd = random_state_dict(official_keys("decoder", 4, False))
    torch.save(sd, tmp_path / "a.pth")
    safetensors.torch.save_file(sd, str(tmp_path / "a.safetensors"))
    z = torch.randn(1, 4, 8, 8)
    a, b = (T.TinyVAE("taesd", T.load_decoder(tmp_path / f"a.{ext}")).decode(z) for ext in ("pth", "safetensors"))
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def taef2(taesd_data):
    return T.load_decoder(taesd_data / "taef2_decoder.pth"), T.load_encoder(taesd_data / "taef2_encoder.pth")


CROP = 256     # centre crops keep the test quick; the benchmark reports whole images


def photographs():
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is a test requirement (tests/requirements.txt)")
    for name in ("astronaut", "coffee", "chelsea"):
        img = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)[None].float() / 255
        top, left = (img.shape[-2] - CROP) // 2, (img.shape[-1] - CROP) // 2
        yield name, img[..., top:top + CROP, left:left + CROP]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_real_photographs_survive_the_taef2_round_trip(taef2, precision):
    vae = T.TinyVAE("taef2", *taef2, precision=precision)
    for name, img in photographs():
        z = vae.encode(img)
        assert z.shape == (1, 128, img.shape[-2] // 16, img.shape[-1] // 16)     # FLUX.2 packed layout
        assert T.psnr(vae.decode(z), img) > PSNR_FLOOR_DB, name


def test_packed_and_unpacked_flux2_latents_decode_alike(taef2):
    vae = T.TinyVAE("taef2", *taef2)
    z = torch.randn(1, 128, 6, 5)
    assert torch.equal(T.pack(T.unpack(z)), z)
    assert torch.equal(vae.decode(z), vae.decode(T.unpack(z)))


def test_broken_taef2_wiring_would_fail_the_floor(taef2):
    """The floor has teeth: dropping the GroupNorm branch or scrambling the packing falls below it."""
    decoder, encoder = taef2
    name, img = next(photographs())
    z = T.TinyVAE("taef2", decoder, encoder).encode(img)
    no_pool = T.Decoder(32, pooled=False)
    no_pool.load_state_dict({k: v for k, v in decoder.state_dict().items() if ".pool." not in k})
    assert T.psnr(T.TinyVAE("taef2", no_pool.eval()).decode(z), img) < PSNR_FLOOR_DB
    scrambled = z.reshape(1, 32, 2, 2, *z.shape[-2:]).transpose(2, 3).reshape(z.shape)
    assert T.psnr(T.TinyVAE("taef2", decoder).decode(scrambled), img) < PSNR_FLOOR_DB


def test_halo_is_the_receptive_field():
    dec, enc = T.Decoder(4), T.Encoder(4)
    assert T.Runner(dec).halo == 9 and T.Runner(enc).halo == 9


def random_net(kind, variant="taesd", seed=3):
    v = T.VARIANTS[variant]
    net = (T.Decoder if kind == "decoder" else T.Encoder)(v.latent_channels, v.pooled)
    net.load_state_dict(random_state_dict(official_keys(kind, v.latent_channels, v.pooled), seed))
    return net.eval()


@pytest.mark.parametrize("variant,tile", [("taesd", 7), ("taef2", 10)])
def test_tiled_decode_equals_whole_decode(taef2, variant, tile):
    """taef2's GroupNorm runs on the whole latent; the local upsampling half runs tiled."""
    decoder = taef2[0] if variant == "taef2" else random_net("decoder")
    vae = T.TinyVAE(variant, decoder)
    z = torch.randn(1, T.VARIANTS[variant].latent_channels, 19, 23, generator=torch.Generator().manual_seed(0))
    ticks = []
    tiled = vae.decode(z, tile=tile, progress=lambda: ticks.append(1))
    assert len(ticks) == T.tile_count(19, 23, tile) > 1
    assert (tiled - vae.decode(z)).abs().max() < 1e-5


def test_a_halo_short_of_the_receptive_field_shows_seams():
    runner = T.Runner(random_net("decoder"))
    z = torch.randn(1, 4, 16, 16)
    whole = runner(z)
    assert (runner(z, tile=8) - whole).abs().max() < 1e-6
    runner.halo -= 3
    assert (runner(z, tile=8) - whole).abs().max() > 1e-5


def test_tiled_encode_equals_whole_encode(taef2):
    for variant, encoder in (("taesd", random_net("encoder")), ("taef2", taef2[1])):
        vae = T.TinyVAE(variant, encoder=encoder)
        img = torch.rand(1, 3, 128, 96, generator=torch.Generator().manual_seed(1))
        assert (vae.encode(img, tile=8) - vae.encode(img)).abs().max() < 1e-5, variant


def test_batch_chunks_equal_one_batch():
    vae = T.TinyVAE("taesd", random_net("decoder"))
    z = torch.randn(5, 4, 8, 8)
    ticks = []
    chunked = vae.decode(z, batch_size=2, progress=lambda: ticks.append(1))
    assert len(ticks) == 3
    assert (chunked - torch.cat([vae.decode(z[i:i + 1]) for i in range(5)])).abs().max() < 1e-5
    assert (chunked - vae.decode(z)).abs().max() < 1e-5


def test_wrong_channels_are_named():
    vae = T.TinyVAE("taesd", random_net("decoder"))
    with pytest.raises(ValueError, match="4-channel latents, got 16"):
        vae.decode(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match="multiples of 16"):
        T.TinyVAE("taef2", encoder=random_net("encoder", "taef2")).encode(torch.rand(1, 3, 24, 32))
    with pytest.raises(ValueError, match="expects 16 latent channels"):
        T.TinyVAE("taef1", random_net("decoder"))


PEAK_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r}); import conftest
from sprint.engines import taesd as T
precision, side, tile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vae = T.TinyVAE("taesd", T.Decoder(4).eval(), precision=precision)
z = torch.randn(1, 4, side, side)
vae.decode(z, tile=tile)             # first run at this size: kernels and scratch buffers get set up
def rss(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
base = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")    # reset the high-water mark
vae.decode(z, tile=tile)
print(rss("VmHWM") - base, T.working_memory(side, side, tile, vae.decoder.halo, 4 if precision == "fp32" else 2))
"""


@pytest.mark.parametrize("precision,side,tile", [("fp32", 64, 0), ("bf16", 64, 0)])
def test_memory_estimate_bounds_the_measured_peak(precision, side, tile):
    """The figure given to ComfyUI's memory manager covers the real peak, without inflating it 2x."""
    import subprocess
    import sys
    if not pathlib.Path("/proc/self/clear_refs").exists():
        pytest.skip("peak memory is measured through Linux /proc")
    if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    script = PEAK_SCRIPT.format(tests=str(pathlib.Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", script, precision, str(side), str(tile)],
                         capture_output=True, text=True, check=True).stdout
    peak, estimate = map(int, out.split())
    assert peak <= estimate <= 2 * peak, (peak, estimate)
