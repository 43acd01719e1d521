import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from perfusion.testing import build_tiny_pipeline, build_tiny_sd2_pipeline, build_tiny_sdxl_pipeline, load_pipeline

# Tests use tiny models: one thread is as fast, and several oversubscribe a small shared machine badly.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Covariance caches go to a per-session folder, never to the user's home."""
    monkeypatch.setenv("PERFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "perfusion-cache"))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_pipe(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir)


@pytest.fixture(scope="session")
def sd2_dir(tmp_path_factory):
    return build_tiny_sd2_pipeline(tmp_path_factory.mktemp("sd2"))


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture
def benchmark_script(monkeypatch):
    """``load(name)``: benchmarks/<name>.py as a module (the benchmarks are scripts, not part of the package)."""

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tiny_judge_path(tmp_path):
    """A families-laboratory judge file of a tiny untrained network (its verdicts are arbitrary but well-formed)."""
    import torch

    from perfusion.world.families.judge import save_judge
    from perfusion.world.families.judge_net import JudgeNet, JudgeNetConfig

    torch.manual_seed(0)
    net = JudgeNet(JudgeNetConfig(widths=(8, 8, 16, 16), spatial_features=16, identity_features=16, embedding_dim=8))
    path = tmp_path / "tiny-judge.safetensors"
    save_judge(net.eval(), path, {"steps": 0})
    return str(path)
