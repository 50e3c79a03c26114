"""Hugging Face semantic segmenters (AutoModelForSemanticSegmentation) from a save_pretrained folder, offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import occlens

transformers = pytest.importorskip("transformers")


def tiny_segformer(folder):
    """A randomly initialised two-stage Segformer (3 classes, 32 x 32 input) and its image processor, saved."""
    config = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3,
        id2label={0: "sky", 1: "road", 2: "car"}, label2id={"sky": 0, "road": 1, "car": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    model.save_pretrained(folder)
    processor = transformers.SegformerImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return model, processor


def test_a_segformer_folder_explains_its_segments_exactly(tmp_path):
    reference, processor = tiny_segformer(tmp_path / "segformer")
    model = occlens.load_model(str(tmp_path / "segformer"))
    assert model.labels == ("sky", "road", "car") and model.preprocess.size == (32, 32)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    got = occlens.explain(model, image, target="segment", patch=16)
    assert got.target_kind == "segment" and got.predicted is None and got.engine in ("dense", "incremental")
    mean, std = (
        torch.tensor(v, dtype=torch.float64)[:, None, None] for v in (processor.image_mean, processor.image_std)
    )
    ref = reference.double()

    def s(x: torch.Tensor) -> np.ndarray:  # each sub-target's mean per-pixel log P over its clean region
        with torch.no_grad():
            lp = torch.log_softmax(ref(pixel_values=((x.double() - mean) / std)[None]).logits[0], 0).numpy()
        return np.array([lp[info["class"]][region].mean() for info, region in
                         zip(got.target_info, got.target_arrays["regions"], strict=True)])  # fmt: skip

    clean = s(image)
    np.testing.assert_allclose([m.loss for m in got.target_maps], -clean, atol=1e-5)
    for i, (r, c) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
        occluded = image.clone()
        occluded[:, r : r + 16, c : c + 16] = 0.5
        np.testing.assert_allclose(got.deltas[:, i // 2, i % 2], s(occluded) - clean, atol=1e-4)
    with pytest.raises(occlens.ConfigError, match="target segment's class 'bus' is not a class name"):
        occlens.explain(model, image, target="segment:bus", patch=16)
