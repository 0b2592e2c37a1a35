import json

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from hydra_umm.data.transforms import to_tensor
from hydra_umm.eval.reconstruction import evaluate_reconstruction, load_images


def test_folder_and_manifest_give_the_same_images(shapes_like_images, tmp_path):
    folder = shapes_like_images[0].parent
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"image": str(p), "caption": "c"}) for p in shapes_like_images))
    a, b = load_images(folder), load_images(manifest)
    assert len(a) == len(b) == 6
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert load_images(folder, size=16, limit=2)[1].size == (16, 16)


def test_metrics_of_a_noisy_reconstructor(shapes_like_images, make_fake_pipeline):
    folder = shapes_like_images[0].parent
    pipeline = make_fake_pipeline(noise=8.0)
    result = evaluate_reconstruction(pipeline, folder, batch_size=4, seed=5)
    assert set(result) == {"n", "skipped", "psnr", "ssim"}  # no Inception weights, no rFID
    originals = load_images(folder)
    recons = make_fake_pipeline(noise=8.0).reconstruct(originals[:4], seed=5) + \
        make_fake_pipeline(noise=8.0).reconstruct(originals[4:], seed=5)
    expected = np.mean([peak_signal_noise_ratio(np.asarray(o), np.asarray(r), data_range=255)
                        for o, r in zip(originals, recons)])
    assert result["psnr"] == pytest.approx(expected, abs=1e-3)  # uint8 [0, 255] and [-1, 1] agree
    assert 0 < result["ssim"] < 1 and result["n"] == 6 and result["skipped"] == 0
    assert [c[0] for c in pipeline.calls] == ["reconstruct", "reconstruct"]
    assert evaluate_reconstruction(pipeline, originals, limit=2)["n"] == 2  # images in memory too


def test_unreadable_images_in_a_manifest_are_skipped_and_counted(shapes_like_images, make_fake_pipeline, tmp_path,
                                                                caplog):
    data = shapes_like_images[0].read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    paths = [shapes_like_images[0], tmp_path / "truncated.png", *shapes_like_images[1:3], tmp_path / "text.png"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": str(p), "caption": "c"}) + "\n" for p in paths))
    with caplog.at_level("WARNING"):
        result = evaluate_reconstruction(make_fake_pipeline(), manifest)
    assert (result["n"], result["skipped"]) == (3, 2)
    assert sum("truncated.png" in r.message for r in caplog.records) == 1
    kept = load_images(manifest, limit=2)  # the limit counts readable images
    assert all(np.array_equal(np.asarray(im), np.asarray(Image.open(p))) for im, p in zip(kept, shapes_like_images))
    assert len(kept) == 2
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": str(tmp_path / "text.png"), "caption": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"none of the 1 images in .*bad\.jsonl is readable"):
        evaluate_reconstruction(make_fake_pipeline(), tmp_path / "bad.jsonl")


def test_a_16_bit_image_is_read_as_its_gradient(tmp_path):
    Image.fromarray(np.arange(0, 65536, 257, dtype=np.uint16)[None].repeat(4, axis=0)).save(tmp_path / "deep.png")
    (image,) = load_images(tmp_path)
    np.testing.assert_array_equal(np.asarray(image)[0, :, 0], np.arange(256))


def test_missing_inception_file_fails_before_reconstructing(shapes_like_images, fake_pipeline, tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        evaluate_reconstruction(fake_pipeline, shapes_like_images[0].parent, inception_weights=tmp_path / "no.pth")
    assert fake_pipeline.calls == []


def test_size_mismatch_is_named(shapes_like_images):
    class Shrinker:
        def reconstruct(self, images, **kwargs):
            return [im.resize((8, 8)) for im in images]

    with pytest.raises(ValueError, match="differs from input size"):
        evaluate_reconstruction(Shrinker(), [Image.open(p) for p in shapes_like_images[:2]])


def test_rfid_is_computed_on_inception_features_of_both_sets(shapes_like_images, make_fake_pipeline, monkeypatch):
    import torch

    import hydra_umm.eval.reconstruction as reconstruction
    from hydra_umm.eval.frechet import fid_from_features

    class ChannelStats(torch.nn.Module):  # stands in for Inception: uint8 (B, 3, H, W) -> ((B, 6),)
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            x = x.float() * self.scale
            return (torch.cat([x.mean((2, 3)), x.std((2, 3))], 1),)

    monkeypatch.setattr(reconstruction, "load_inception", lambda path: ChannelStats())
    folder = shapes_like_images[0].parent
    result = evaluate_reconstruction(make_fake_pipeline(noise=20.0), folder, inception_weights="given.pth")
    originals = to_tensor(load_images(folder))
    recons = to_tensor(make_fake_pipeline(noise=20.0).reconstruct(load_images(folder), seed=0))
    net = ChannelStats()
    feats = [net(((t + 1) * 127.5).round().to(torch.uint8))[0].detach().double().numpy() for t in (originals, recons)]
    assert result["rfid"] == pytest.approx(fid_from_features(*feats), rel=1e-9)
    assert result["rfid"] > 0
