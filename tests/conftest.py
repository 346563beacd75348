import os

# Two xdist workers share two cores: one torch thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)


import json  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def fake_default_model(monkeypatch, tmp_path):
    """Point vla.default_model at an empty folder; the returned `fill()` makes it look like a committed default
    model (empty files + a config naming vla-small) and returns the folder."""
    from vla import default_model

    monkeypatch.setattr(default_model, "DEFAULT_DIR", tmp_path)

    def fill():
        for name in default_model.REQUIRED_FILES:
            (tmp_path / name).write_bytes(b"")
        (tmp_path / "config.json").write_text(json.dumps({"clip_model": "vla-small"}))
        return tmp_path

    return fill
