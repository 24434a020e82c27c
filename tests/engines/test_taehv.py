"""TAEHV family (taew2_1, taew2_2): the official key layout loads (whole file or decoder only),
images and video decode to the Wan VAE's frame counts and sizes, time is causal, tiled == whole."""
import math

import pytest
import torch

from sprint.engines import taehv as T


def official_decoder_keys(latent_channels, patch):
    """{key: shape} of madebyollin/taehv's decoder (nn.Sequential indices), written out by hand."""
    keys = {"1.weight": (256, latent_channels, 3, 3), "1.bias": (256,)}
    widths = ((3, 256, 128, 1), (9, 128, 64, 2), (15, 64, 64, 2))
    for first, n, n_next, grow in widths:
        for i in range(first, first + 3):
            keys.update({f"{i}.conv.0.weight": (n, 2 * n, 3, 3), f"{i}.conv.0.bias": (n,),
                         f"{i}.conv.2.weight": (n, n, 3, 3), f"{i}.conv.2.bias": (n,),
                         f"{i}.conv.4.weight": (n, n, 3, 3), f"{i}.conv.4.bias": (n,)})
        keys[f"{first + 4}.conv.weight"] = (n * grow, n, 1, 1)
        keys[f"{first + 5}.weight"] = (n_next, n, 3, 3)
    keys.update({"22.weight": (3 * patch ** 2, 64, 3, 3), "22.bias": (3 * patch ** 2,)})
    return keys


def random_file(latent_channels, patch, seed=0, whole=True):
    """A state dict in the official file's layout (encoder keys beside the decoder's when whole)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_decoder_keys(latent_channels, patch).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        sd[k] = torch.randn(shape, generator=g) / math.sqrt(fan_in) if len(shape) > 1 else torch.randn(shape, generator=g) * 0.01
    if whole:
        return {"encoder.0.weight": torch.zeros(64, 3 * patch ** 2, 3, 3), **{f"decoder.{k}": v for k, v in sd.items()}}
    return sd


@pytest.fixture(scope="module", params=["taew2_1", "taew2_2"])
def decoder(request, tmp_path_factory):
    v = T.VARIANTS[request.param]
    path = tmp_path_factory.mktemp("taehv") / f"{request.param}.pth"
    torch.save(random_file(v.latent_channels, v.patch), path)
    return T.VideoDecoder(request.param, T.load_decoder(path))


def test_decoder_only_file_with_stripped_prefix_loads_the_same(tmp_path):
    whole, alone = tmp_path / "taew2_1.pth", tmp_path / "taew2_1_decoder.pth"
    torch.save(random_file(16, 1, seed=3), whole)
    torch.save(random_file(16, 1, seed=3, whole=False), alone)
    a, b = T.load_decoder(whole), T.load_decoder(alone)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_foreign_file_is_refused_naming_the_layout(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"decoder.1.weight": torch.zeros(256, 16, 3, 3)}, path)
    with pytest.raises(ValueError, match="official key layout"):
        T.load_decoder(path)


def test_image_latent_decodes_to_one_frame(decoder):
    """Qwen-Image samples [B, 16, 1, H, W]: one frame per latent, 8 x patch pixels per cell."""
    c, s = decoder.variant.latent_channels, decoder.variant.spatial
    z = torch.randn(2, c, 1, 6, 5, generator=torch.Generator().manual_seed(0))
    out = decoder.decode(z)
    assert out.shape == (2, 1, 3, 6 * s, 5 * s) and 0 <= out.min() and out.max() <= 1
    assert out.std() > 0.01                                   # not a constant image
    assert torch.equal(decoder.decode(z[:, :, 0]), out)       # a 4-D latent is the same image


def test_video_latent_decodes_to_the_wan_frame_count_causally(decoder):
    """5 latent frames -> 1 + 4 * 4 = 17 frames; frames decoded from the first k latents do not
    change when later latents do (the MemBlocks only look back)."""
    c = decoder.variant.latent_channels
    z = torch.randn(1, c, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    out = decoder.decode(z)
    assert out.shape[:2] == (1, 17)
    changed = z.clone()
    changed[:, :, 4] += 1
    again = decoder.decode(changed)
    assert torch.equal(again[:, :13], out[:, :13]) and not torch.equal(again[:, 13:], out[:, 13:])


@pytest.mark.parametrize("frames", [1, 3])
def test_tiled_equals_whole(decoder, frames):
    c = decoder.variant.latent_channels
    z = torch.randn(1, c, frames, 10, 8, generator=torch.Generator().manual_seed(2))
    whole = decoder.decode(z)
    calls = []
    tiled = decoder.decode(z, tile=4, progress=lambda: calls.append(1))
    assert len(calls) == math.ceil(10 / 4) * math.ceil(8 / 4)
    assert (tiled - whole).abs().max() <= 1e-5


def test_wrong_channels_are_refused(decoder):
    with pytest.raises(ValueError, match="latent channels|-channel latents"):
        decoder.decode(torch.zeros(1, 4, 1, 8, 8))
