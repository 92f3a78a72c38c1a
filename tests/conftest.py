"""Shared fixtures.

``argilla_server``: ONE real embedded Argilla stack (Redis, argilla-server with the
SQLite search engine, rq worker) per test session, on a free port in a temporary
home, started on first use and stopped at the end of the session.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def make_emotion_slice(tmp_path_factory):
    """``make(train=N, validation=N, test=N)``: a folder with the first N rows of each emotion split as parquet."""
    import pyarrow.parquet as pq

    from cleanloop.model.data import bundled_emotion_dir

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion"
    src = shared if shared.exists() else bundled_emotion_dir()

    def make(**sizes: int) -> Path:
        folder = tmp_path_factory.mktemp("emotion")
        for split, n in sizes.items():
            # pyarrow keeps the schema's Hugging Face metadata (the ClassLabel names)
            pq.write_table(pq.read_table(src / f"{split}.parquet").slice(0, n), folder / f"{split}.parquet")
        return folder

    return make


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+): there, an outgoing connection of another
    process can take the port between this check and the server binding it ("Address already in use")."""
    import random

    for port in random.sample(range(20000, 32768), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767")


@dataclass
class ArgillaServer:
    """The running test server: its config, home, URL and users' credentials."""

    cfg: object  # cleanloop.config.Config
    home: Path
    url: str
    owner_key: str
    annotator: str
    annotator_password: str
    annotator_key: str

    def client(self, api_key: str | None = None):
        """An ``argilla.Argilla`` SDK client (the owner's unless ``api_key`` is given)."""
        import argilla as rg

        return rg.Argilla(api_url=self.url, api_key=api_key or self.owner_key, timeout=60)

    def http(self, api_key: str | None = None):
        """An ``httpx.Client`` on the REST API, as the annotator unless ``api_key`` is given."""
        import httpx

        return httpx.Client(base_url=self.url, headers={"X-Argilla-Api-Key": api_key or self.annotator_key}, timeout=60)


@pytest.fixture(scope="session")
def argilla_server(tmp_path_factory):
    from cleanloop.config import Config
    from cleanloop.labeling.embedded import credentials, down, up

    workdir = tmp_path_factory.mktemp("argilla-run")
    cfg = Config(
        workdir=str(workdir),
        argilla_url=f"http://127.0.0.1:{free_port()}",
        argilla_workspace="cleanloop",
        argilla_annotators=["annotator"],
    )
    home = workdir / "argilla"
    st = up(cfg, home, timeout=240)
    try:
        creds = credentials(cfg, home)
        yield ArgillaServer(
            cfg=cfg, home=home, url=st.url, owner_key=creds["owner"].api_key, annotator="annotator",
            annotator_password=creds["annotator"].password, annotator_key=creds["annotator"].api_key,
        )
    finally:
        down(cfg, home)
