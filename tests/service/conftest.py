"""A running service over a tiny pipeline built from configs, for the tests of one module."""

import pytest

from perfusion.service.config import ServiceConfig
from perfusion.service.testing import RunningService


@pytest.fixture(scope="module")
def service_config(tmp_path_factory, tiny_pipeline_dir):
    return ServiceConfig(model=str(tiny_pipeline_dir), data=tmp_path_factory.mktemp("service-data"), checkpoint_every=2)


@pytest.fixture(scope="module")
def running(service_config, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the covariance cache as the autouse fixture puts it, for the threads
        patch.setenv("PERFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "perfusion-cache"))
        with RunningService(service_config) as running:
            yield running
