import pytest

from vla.synthetic import make_colour_folder

CLASSES = ["red", "green", "blue", "yellow", "purple", "cyan"]


@pytest.fixture(scope="session")
def tiny_clip():
    from vla.clip import load_clip

    return load_clip("vla-tiny")


@pytest.fixture
def colour_folder(tmp_path):
    """DIR/<colour>/*.png: 6 classes x 6 noisy solid-colour images."""
    return make_colour_folder(tmp_path / "colours", CLASSES, per_class=6)
