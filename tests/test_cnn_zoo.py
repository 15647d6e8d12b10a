"""benchmarks/cnn_zoo.py: its paper table names real constructors, and its counters measure what they claim."""

import pytest


@pytest.fixture(scope="module")
def zoo(load_script):
    return load_script("benchmarks/cnn_zoo.py")


def test_paper_figures_name_existing_constructors(zoo, load_script):
    names = {name for script in zoo.SCRIPTS for name in load_script(script).MODELS}
    assert set(zoo.PAPER) <= names
    assert zoo.CIFAR <= names and set(zoo.SIDE) <= names | {"inception_resnet_v2"}


def test_size_and_cost_of_resnet18(zoo, load_script):
    """ResNet-18 at 224x224: torchvision's parameter count and the 1.8 G multiply-adds of the paper's Table 1."""
    params, macs = zoo.size_and_cost(load_script("04-cnns/resnet_torch.py").resnet18, 224, 1000)
    assert params == 11_689_512
    assert 1.80e9 < macs < 1.83e9  # convolutions and the fc layer, counted once per multiply-add


def test_latency_is_a_positive_time(zoo, load_script):
    ms = zoo.latency(load_script("04-cnns/resnet_torch.py").resnet20, 32, 10, repeats=2)
    assert 0 < ms < 10_000
