"""The gateway's lifespan: what start-up opens, shutdown closes, and so does a failed start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from gateway.app import Gateway, create_app
from gateway.asgi import Message
from gateway.keys.store import KeyStoreUnavailable
from gateway.settings import load_settings
from tests.servers import TEST_PEPPER, free_port, gateway_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway_at(tmp_path: Path, key_store: Path) -> Gateway:
    # A replica nobody listens on: the monitor's checks fail, which is all they need to do.
    config = gateway_config(
        free_port(),
        {"sim-model": [f"http://127.0.0.1:{free_port()}"]},
        auth={"pepper": TEST_PEPPER, "key_store": {"sqlite_path": str(key_store)}},
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return create_app(load_settings(path, {}))


async def lifespan(app: Gateway, *steps: str) -> list[Message]:
    """Run the lifespan through STEPS ("startup", "shutdown"); the messages it sent."""
    inbox = [{"type": f"lifespan.{step}"} for step in steps]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    return sent


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_a_start_that_fails_part_way_closes_what_it_opened(tmp_path: Path) -> None:
    # The key store's directory would have to be made under a plain file: it cannot be
    # opened, after the upstream session, the health checks and discovery were.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    app = gateway_at(tmp_path, blocker / "keys.db")
    before = other_tasks()
    with pytest.raises(KeyStoreUnavailable):
        await lifespan(app, "startup")
    with pytest.raises(RuntimeError, match="outside the lifespan"):
        app.upstream.session  # noqa: B018 (the property is the check)
    # The health checks the start had begun are stopped, not left running.
    assert other_tasks() == before


async def test_the_failed_start_is_reported_to_the_server(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    app = gateway_at(tmp_path, blocker / "keys.db")
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(KeyStoreUnavailable):
        await app({"type": "lifespan"}, receive, send)
    assert [message["type"] for message in sent] == ["lifespan.startup.failed"]


async def test_shutdown_closes_what_startup_opened(tmp_path: Path) -> None:
    app = gateway_at(tmp_path, tmp_path / "keys" / "keys.db")
    before = other_tasks()
    sent = await lifespan(app, "startup", "shutdown")
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    with pytest.raises(RuntimeError, match="outside the lifespan"):
        app.upstream.session  # noqa: B018 (the property is the check)
    assert other_tasks() == before
