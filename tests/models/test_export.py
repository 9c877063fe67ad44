import pytest
import torch

from mnist_fusion.models import ConvEncoderConfig, FusionHeadConfig, FusionModel, FusionModelConfig

SMALL = ConvEncoderConfig(channels=(4, 8))
TINY = ConvEncoderConfig(channels=(4,), stage_pool="avg")
HEADS = ["regression", "classification", "exact"]


def small_model(**head) -> FusionModel:
    torch.manual_seed(0)
    config = FusionModelConfig(encoder=SMALL, head=FusionHeadConfig(**head))
    return FusionModel(config).eval()


def inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(n, 1, 28, 28, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def assert_same_outputs(actual, expected) -> None:
    for name, value in expected._asdict().items():
        if value is None:
            assert getattr(actual, name) is None, name
        else:
            torch.testing.assert_close(getattr(actual, name), value, msg=name)


@pytest.mark.parametrize("sum_head", HEADS)
def test_export_matches_eager(sum_head):
    model = small_model(sum_head=sum_head)
    image, side = inputs()

    exported = torch.export.export(model, (image, side))

    with torch.no_grad():
        assert_same_outputs(exported.module()(image, side), model(image, side))


@pytest.mark.parametrize("options", [{"combine": "film"}, {"side_encoding": "embedding"}])
def test_export_learned_options(options):
    model = small_model(sum_head="classification", **options)
    image, side = inputs()

    exported = torch.export.export(model, (image, side))

    with torch.no_grad():
        assert_same_outputs(exported.module()(image, side), model(image, side))


def test_export_pair():
    model = small_model(sum_head="exact")
    image, _ = inputs()
    second = image.flip(0)

    exported = torch.export.export(model, (image,), {"second_image": second})

    with torch.no_grad():
        expected = model(image, second_image=second)
    assert_same_outputs(exported.module()(image, second_image=second), expected)


def test_export_other_batch_size():
    model = small_model(sum_head="exact")
    image, side = inputs(4)
    batch = torch.export.Dim("batch", min=2, max=64)

    exported = torch.export.export(model, (image, side), dynamic_shapes=({0: batch}, {0: batch}))

    image, side = inputs(7)
    with torch.no_grad():
        assert_same_outputs(exported.module()(image, side), model(image, side))


def test_compile_matches_eager():
    # Inductor builds C++ kernels on the CPU, which takes about 20 s even for this model.
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = FusionModelConfig(encoder=TINY, head=FusionHeadConfig(sum_head="exact"))
    model = FusionModel(config).eval()
    image, side = inputs()

    compiled = torch.compile(model, fullgraph=True)

    with torch.no_grad():
        assert_same_outputs(compiled(image, side), model(image, side))


@pytest.mark.parametrize("sum_head", ["regression", "classification"])
def test_compile_full_graph(sum_head):
    # fullgraph=True fails on any graph break, such as one in the input checks.
    torch._dynamo.reset()
    model = small_model(sum_head=sum_head)
    image, side = inputs()

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)

    with torch.no_grad():
        assert_same_outputs(compiled(image, side), model(image, side))


def test_compile_pair():
    torch._dynamo.reset()
    model = small_model(sum_head="exact")
    image, _ = inputs()

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)

    with torch.no_grad():
        expected = model(image, second_image=image.flip(0))
        assert_same_outputs(compiled(image, second_image=image.flip(0)), expected)
