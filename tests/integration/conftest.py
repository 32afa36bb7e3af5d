"""Every test here runs with one intra-op thread (the ``one_thread`` fixture of tests/conftest.py): on 2 shared
cores, two threads per process are ~10x slower."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass
