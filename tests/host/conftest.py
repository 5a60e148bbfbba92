"""Host tier: tests that drive a real ComfyUI server over HTTP. Skipped, with one line naming where we looked,
when no ComfyUI checkout is found."""

from pathlib import Path

import pytest

from comfy_host import ComfyServer, find_checkout, find_python, fixture_checkpoint

CHECKOUT, WHY_NOT = find_checkout()


def pytest_collection_modifyitems(config, items):
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.host)
            if CHECKOUT is None:
                item.add_marker(pytest.mark.skip(reason=f"host tier: {WHY_NOT}"))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One real ComfyUI server for the whole session, this checkout loaded as custom node `atelier`."""
    python = find_python(CHECKOUT)
    checkpoint = fixture_checkpoint(CHECKOUT, python)
    server = ComfyServer(CHECKOUT, python, tmp_path_factory.mktemp("comfy_host"))
    server.prepare(checkpoint)
    server.client = server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def comfy(comfy_server):
    """An HTTP client of the session's server."""
    return comfy_server.client
