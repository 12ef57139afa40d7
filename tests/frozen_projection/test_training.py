"""The projection heads learn on the demo data, reload to identical outputs, and reject bad input by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from safetensors.torch import save_file

from common.engines.checkpoint import load_trained_weights
from common.methods.projection.downstream_evaluation import project_table
from common.methods.projection.heads import DualProjectionModel, ProjectionHead, encoders_fingerprint
from common.methods.projection.inference import load_ready_embeddings
from common.metrics.embedding_quality import pair_auroc

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "frozen_projection"


def _demo_parser(root: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "demo.json")])
    parser["bundle_root"] = str(root)
    for key, value in {**overrides}.items():
        parser[key] = value
    return parser


def _test_pair_auroc(network, table) -> float:
    test = [r for r in table if r["split"] == "test"]
    image_projection, _ = project_table(network, test)
    return pair_auroc(torch.as_tensor(image_projection), torch.tensor([r["label"] for r in test]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen_projection")
    parser = _demo_parser(root)
    parser.parse()
    table = parser.get_parsed_content("embedding_table")
    network = parser.get_parsed_content("network")
    before = _test_pair_auroc(network, table)
    trainer = parser.get_parsed_content("train#trainer")
    epoch_losses: list[float] = []
    running: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: running.append(e.state.output["loss"].item()))
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: (epoch_losses.append(float(np.mean(running))), running.clear())
    )
    trainer.run()
    return {
        "root": root,
        "parser": parser,
        "table": table,
        "network": network,
        "before": before,
        "losses": epoch_losses,
    }


def test_loss_falls_and_held_out_pair_auroc_rises(trained):
    losses = trained["losses"]
    assert losses[-1] < 0.8 * losses[0], losses
    after = _test_pair_auroc(trained["network"], trained["table"])
    test = [r for r in trained["table"] if r["split"] == "test"]
    raw = pair_auroc(
        torch.as_tensor(np.stack([r["image_embedding"] for r in test])), torch.tensor([r["label"] for r in test])
    )
    # the label-aware loss makes same-label image pairs more similar than different-label ones on unseen studies
    assert after > trained["before"] + 0.03, (trained["before"], after)
    assert after > raw + 0.03, (raw, after)
    assert after > 0.68


def test_training_reads_its_batches_from_the_embedding_cache(trained):
    from common.methods.projection.cached_dataset import CachedEmbeddingDataset

    parser = trained["parser"]
    dataset = parser.get_parsed_content("train#dataset")
    assert isinstance(dataset, CachedEmbeddingDataset)  # the memory-mapped shards, not the table's arrays
    train = [r for r in trained["table"] if r["split"] == "train"]
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    assert batch["image_embedding"].shape == (parser["batch_size"], len(train[0]["image_embedding"]))
    for indices in list(parser.get_parsed_content("train#batch_sampler"))[:2]:
        batch = dataset.__getitems__(indices)
        for name in ("image_embedding", "text_embedding"):
            np.testing.assert_array_equal(batch[name].numpy(), np.stack([train[i][name] for i in indices]))
        assert batch["label"].tolist() == [train[i]["label"] for i in indices]


def test_checkpoint_reloads_to_identical_outputs(trained):
    final = trained["root"] / "models" / "model_final.safetensors"
    best = trained["root"] / "models" / "model.safetensors"
    assert final.is_file() and best.is_file()
    fresh = DualProjectionModel(**trained["network"].config)
    load_trained_weights(fresh, final)
    batch = {
        "image_embedding": torch.as_tensor(np.stack([r["image_embedding"] for r in trained["table"][:16]])),
        "text_embedding": torch.as_tensor(np.stack([r["text_embedding"] for r in trained["table"][:16]])),
    }
    trained["network"].eval()
    expected, got = trained["network"](batch), fresh.eval()(batch)
    for key in ("image_projection", "text_projection"):
        assert torch.equal(expected[key], got[key])


def test_checkpoint_for_other_encoders_is_refused(trained):
    parser = trained["parser"]
    image_encoder, text_encoder = parser.get_parsed_content("image_encoder"), parser.get_parsed_content("text_encoder")
    path = trained["root"] / "models" / "model.safetensors"
    fresh = DualProjectionModel(**trained["network"].config)
    load_trained_weights(fresh, path, encoders_fingerprint(image_encoder, text_encoder))
    # the same weights with another pooling give other embeddings: another base for the heads
    text_encoder.pooling, pooling = "mean" if text_encoder.pooling != "mean" else "cls", text_encoder.pooling
    try:
        with pytest.raises(
            ValueError, match=r"model\.safetensors belongs to base model medvlm-base:\w+ .* but was given"
        ):
            load_trained_weights(fresh, path, encoders_fingerprint(image_encoder, text_encoder))
    finally:
        text_encoder.pooling = pooling


def test_checkpoint_that_does_not_fit_is_listed(trained, tmp_path):
    wrong = DualProjectionModel(image_dim=7, text_dim=5, hidden_dim=4, out_dim=3)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_trained_weights(wrong, trained["root"] / "models" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_trained_weights(wrong, tmp_path / "nothing.safetensors")


def test_head_names_a_width_mismatch():
    head = ProjectionHead(768, 16, 128)  # the paper's preset
    assert sum(p.numel() for p in head.parameters()) == (768 * 16 + 16) + (16 * 128 + 128)
    with pytest.raises(ValueError, match=r"expects embeddings of shape \(B, 768\), got \[2, 1536\]"):
        head(torch.randn(2, 1536))


def test_ready_embeddings_with_nan_are_named(tmp_path):
    path = tmp_path / "emb.safetensors"
    embeddings = torch.randn(4, 8)
    embeddings[2, 3] = float("nan")
    save_file({"image_embedding": embeddings}, str(path))
    with pytest.raises(ValueError, match=r"emb.safetensors: tensor 'image_embedding' has NaN/inf in row\(s\) \[2\]"):
        load_ready_embeddings(path)
    save_file({"image_embedding": torch.randn(4, 6)}, str(path))
    with pytest.raises(ValueError, match="width 6, the trained head expects 8"):
        load_ready_embeddings(path, {"image_embedding": 8})


def test_clip_objective_aligns_images_with_their_reports(trained):
    from common.metrics.retrieval import bidirectional_retrieval

    root = trained["root"]  # same cache: nothing is re-embedded
    parser = _demo_parser(root, objective="clip", ckpt_dir=str(root / "models_clip"))
    parser.parse()
    table = parser.get_parsed_content("embedding_table")
    network = parser.get_parsed_content("network")
    test = [r for r in table if r["split"] == "test"]

    def recall_at_10() -> float:
        images, texts = project_table(network, test)
        normalize = torch.nn.functional.normalize
        result = bidirectional_retrieval(
            normalize(torch.as_tensor(images), dim=-1), normalize(torch.as_tensor(texts), dim=-1), (10,)
        )
        return (result["image_to_text_R@10"] + result["text_to_image_R@10"]) / 2

    before = recall_at_10()
    parser.get_parsed_content("train#trainer").run()
    after = recall_at_10()
    print(f"test R@10 (mean of both directions) before {before:.3f} -> after CLIP training {after:.3f}")
    # chance R@10 is 10 / len(test) (about 0.17 here); InfoNCE pulls each image towards its own report
    assert after > before + 0.15 and after > 0.3, (before, after)
    assert (root / "models_clip" / "model.safetensors").is_file()
