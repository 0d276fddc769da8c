"""Shared fixtures. Tests marked needs_data read the real corpus, fetched once into the danlu cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shakespeare_docs() -> list[dict]:
    from danlu.data.sources import read_source

    return list(read_source("shakespeare"))


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_docs) -> str:
    return "\n\n".join(d["text"] for d in shakespeare_docs)
