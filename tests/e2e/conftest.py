"""The stack `make run` starts, for the tests that use it as a user would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local_stack import devstack


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`python -m deploy.local.devstack` (what `make run` runs) on free ports, once it says it is up."""
    with devstack(tmp_path_factory.mktemp("make-run")) as (env, _):
        yield env
