"""The tiny HarmonModel shared by the Harmon tests."""

import pytest
from harmon_samples import build_model

from hydra_umm.models.harmon import HarmonModel


@pytest.fixture(scope="session")
def harmon_model() -> HarmonModel:
    return build_model()
