"""Feature classifier: shapes, feature semantics, a short real training run, checkpoint round trips."""
import pytest
import torch
import torch.nn.functional as F

from rdd.checkpoint import save_checkpoint
from rdd.classifier import EvalNet, FeatureClassifier, build_classifier, evaluate_accuracy, load_classifier, train_classifier
from rdd.config import ExperimentConfig
from rdd.data import load_dataset
from rdd.errors import RddError


def test_densenet201_cifar_stem_ends_at_4x4():
    model = build_classifier("densenet201", in_channels=3).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.feature_map.shape == (2, 1920, 4, 4)
    assert out.pooled.shape == (2, 1920) and out.logits.shape == (2, 10)
    assert model.num_features == 1920


def test_small_densenet_features_are_pre_relu_and_pooled():
    model = build_classifier("densenet-bc-small", in_channels=1).eval()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    out = model(torch.rand(8, 1, 16, 16) * 2 - 1)
    assert out.feature_map.shape == (8, model.num_features, 4, 4)
    assert (out.feature_map < 0).any()  # taken after norm5, before the ReLU
    torch.testing.assert_close(out.pooled, F.relu(out.feature_map).mean((2, 3)))
    torch.testing.assert_close(out.logits, model.classifier(out.pooled))


def test_evalnet_is_another_architecture():
    evalnet = build_classifier("evalnet-cnn", in_channels=1).eval()
    densenet = build_classifier("densenet-bc-small", in_channels=1)
    assert isinstance(evalnet, EvalNet) and not isinstance(evalnet, FeatureClassifier)
    assert set(evalnet.state_dict()).isdisjoint(k for k in densenet.state_dict() if "features" in k)
    out = evalnet(torch.rand(4, 1, 16, 16) * 2 - 1)
    assert out.pooled.shape == (4, evalnet.num_features) and out.logits.shape == (4, 10)


def test_unknown_arch():
    with pytest.raises(RddError, match="densenet201"):
        build_classifier("resnet50", 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = ExperimentConfig()  # Fashion-MNIST 16x16, 1 channel, densenet-bc-small
    cfg.classifier.epochs, cfg.classifier.batch_size = 1, 64
    out = tmp_path_factory.mktemp("clf")
    result = train_classifier(cfg, out, progress=False, train_limit=3000, test_limit=1000)
    return cfg, out, result


@pytest.mark.slow
def test_train_classifier_learns(trained):
    cfg, out, result = trained
    assert result["test_accuracy"] > 0.5  # chance is 0.1; 0.63-0.66 measured over seeds
    assert (out / "classifier.pt").is_file()
    assert len((out / "classifier-metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_load_classifier_round_trip(trained, tmp_path):
    cfg, out, result = trained
    model = load_classifier(result["path"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    test = torch.utils.data.Subset(load_dataset(cfg.data, "test"), range(1000))
    assert evaluate_accuracy(model, test) == pytest.approx(result["test_accuracy"])
    x = torch.stack([test[i][0] for i in range(16)])
    # A plain state dict (as a user's own DenseNet weights come in) gives the same logits.
    save_checkpoint(model.state_dict(), tmp_path / "plain.pt")
    plain = load_classifier(tmp_path / "plain.pt", arch="densenet-bc-small", in_channels=1)
    torch.testing.assert_close(plain(x).logits, model(x).logits, rtol=0, atol=0)
    torch.testing.assert_close(load_classifier(result["path"])(x).logits, model(x).logits, rtol=0, atol=0)


def test_load_rejects_other_checkpoints(tmp_path):
    save_checkpoint({"kind": "teacher", "model": {}}, tmp_path / "teacher.pt")
    with pytest.raises(RddError, match="teacher"):
        load_classifier(tmp_path / "teacher.pt")
    save_checkpoint({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(RddError, match="arch="):
        load_classifier(tmp_path / "plain.pt")
    with pytest.raises(RddError, match="does not match"):
        load_classifier(tmp_path / "plain.pt", arch="densenet-bc-small", in_channels=1, num_classes=10)
