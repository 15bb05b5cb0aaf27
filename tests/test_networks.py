import torch

from rdd.config import DataConfig, ModelConfig
from rdd.networks import build_model, count_parameters


def test_paper_cifar10_unet_has_the_papers_size():
    model = build_model(ModelConfig(name="paper-cifar10"), DataConfig(resolution=32, channels=3))
    assert count_parameters(model) == 35_746_307  # the paper's 35.7M network


def test_imagenet64_unet_is_class_conditional():
    model = build_model(ModelConfig(name="paper-imagenet64", num_classes=1000), DataConfig(resolution=64, channels=3))
    assert model.unet.class_embedding.num_embeddings == 1000
    down = [type(b).__name__ for b in model.unet.down_blocks]
    assert down == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]  # attention at 16x16 and 8x8


def test_time_enters_as_a_continuous_value_and_labels_matter():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", num_classes=10), DataConfig(resolution=16, channels=1)).eval()
    z = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a = model(z, torch.tensor([0.5, 0.5]), torch.tensor([1, 1]))
        b = model(z, torch.tensor([0.5001, 0.5001]), torch.tensor([1, 1]))
        c = model(z, torch.tensor([0.5, 0.5]), torch.tensor([2, 2]))
    assert a.shape == z.shape
    assert 0 < (a - b).abs().max() < 0.1 and (a - c).abs().max() > 0


def test_a_student_trains_with_the_stages_dropout_not_its_teachers():
    """CIFAR-10's base model trains with dropout 0.1 and its students with none (the public code); the
    student copy once kept the teacher's 0.1 while its config said 0."""
    from rdd.networks import student_copy

    teacher = build_model(ModelConfig(name="tiny", dropout=0.1), DataConfig())
    resnet_p = lambda m: {d.p for n, d in m.named_modules() if isinstance(d, torch.nn.Dropout) and "resnets" in n}
    assert resnet_p(teacher) == {0.1}
    assert resnet_p(student_copy(teacher, dropout=0.0)) == {0.0} and resnet_p(teacher) == {0.1}
    assert resnet_p(student_copy(teacher)) == {0.1}
    attention_p = {d.p for n, d in student_copy(teacher, dropout=0.3).named_modules() if isinstance(d, torch.nn.Dropout) and "resnets" not in n}
    assert attention_p <= {0.0}  # attention's own dropout is not UNet2DModel(dropout=...)'s
