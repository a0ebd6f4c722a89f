"""Remote desktops end to end: real OIDC provider, hub, Docker engine, desktop image, Chromium.

One module-scoped hub with short culling timeouts. The browser keeps a noVNC tab open on one
desktop while another desktop has nobody connected: the culler must stop the second and
leave the first, which is the portal's rule for desktops (connected means in use).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from portal.demo.sampledata import DEMO_USERS, generate
from tests.support.docker_hub import docker_hub
from tests.support.docker_support import engine, portal_containers
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, demo_provider

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.browser]

XRF = "MA1234/ID21/xrf_map_0001"
DESKTOP = "desktop-xrf-map-0001"  # the server /hub/open names for it
IDLE_TIMEOUT = 30


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("desktop-hub")
    generate(folder / "data")
    provider = demo_provider(folder, "alice")
    cull = {"timeout": IDLE_TIMEOUT, "every": 5}
    try:
        with docker_hub(
            provider, folder, folder / "data", images=["desktop"], users=["alice"], cull=cull
        ) as h:
            yield h
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def alice(hub: Hub) -> PortalClient:
    client = PortalClient(hub.url)
    client.login(DEMO_USERS["alice"]["sub"])
    return client


@pytest.fixture(scope="module")
def desktop_tab(browser: Browser, hub: Hub, artifacts: Path) -> Iterator[Page]:
    """alice follows the catalogue's "open in desktop" link; the tab stays open."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(90_000)
    page.goto(f"{hub.url}/hub/open?dataset={XRF}&type=desktop")
    page.get_by_text("Sign in with Umbrella").click()
    page.fill("input[name=sub]", DEMO_USERS["alice"]["sub"])
    page.get_by_role("button", name="Authorize").click()
    page.get_by_role("button", name="Start").click()  # a link from another site: confirm
    page.wait_for_url(f"**/user/alice/{DESKTOP}/desktop/**")
    expect(page.locator("#status")).to_have_text("Connected")
    yield page
    page.close()


def container(server: str):
    for c in portal_containers(engine(), "alice"):
        if c.labels["org.panosc.portal.server"] == server:
            return c
    raise AssertionError(f"no container for alice's server {server!r}")


def in_desktop(command: list[str], detach: bool = False) -> str:
    env = {"DISPLAY": ":1", "HOME": "/home/jovyan", "QT_QPA_PLATFORM": "xcb"}
    code, out = container(DESKTOP).exec_run(command, environment=env, detach=detach)
    if detach:
        return ""
    assert code == 0, out.decode()
    return out.decode()


def test_desktop_shows_xfce_with_datasets_icon(desktop_tab: Page, artifacts: Path) -> None:
    desktop_tab.wait_for_timeout(6000)  # XFCE draws its panel and icons
    desktop_tab.screenshot(path=artifacts / "07-desktop.png")
    box = container(DESKTOP)
    assert box.labels["org.panosc.portal.server-type"] == "desktop"
    assert box.labels["org.panosc.portal.environment"] == "desktop"
    listing = in_desktop(["ls", "-L", "/home/jovyan/Desktop/Datasets/MA1234"])
    assert listing.split() == ["xrf_map_0001"]  # the Datasets icon opens ~/datasets
    names = in_desktop(["cat", "/home/jovyan/.config/xfce4/xfconf/xfce-perchannel-xml/xfwm4.xml"])
    assert 'value="Datasets: xrf_map_0001"' in names  # the panel's label names the datasets


def test_silx_view_opens_the_dataset(desktop_tab: Page, artifacts: Path) -> None:
    in_desktop(["/usr/local/bin/panosc-silx-view"], detach=True)  # what its launcher runs
    deadline = time.monotonic() + 60
    while "silx" not in in_desktop(["sh", "-c", "ps -eo args"]).lower():
        assert time.monotonic() < deadline
        time.sleep(1)
    desktop_tab.wait_for_timeout(12_000)  # Qt starts and silx reads the NeXus tree
    desktop_tab.screenshot(path=artifacts / "08-desktop-silx-view.png")
    windows = in_desktop(["sh", "-c", "xwininfo -root -tree | grep -i silx || true"])
    assert "Silx viewer" in windows or "silx" in windows.lower()


def test_clipboard_reaches_the_remote_desktop(desktop_tab: Page) -> None:
    desktop_tab.click("#clipboard-button")
    desktop_tab.fill("#clipboard-text", "panosc clipboard check")
    desktop_tab.dispatch_event("#clipboard-text", "change")
    desktop_tab.click("#clipboard-button")
    read = (
        "from PySide6.QtGui import QGuiApplication; app = QGuiApplication([]);"
        " print(app.clipboard().text())"
    )
    deadline = time.monotonic() + 20
    while "panosc clipboard check" not in in_desktop(["/opt/venv/bin/python", "-c", read]):
        assert time.monotonic() < deadline, "the clipboard text never reached the desktop"
        time.sleep(1)


def test_no_vnc_port_is_reachable_from_outside(desktop_tab: Page) -> None:
    box = container(DESKTOP)
    box.reload()
    [network] = box.attrs["NetworkSettings"]["Networks"].values()
    address = network["IPAddress"]
    assert address  # the container's address on the users' network
    for port in (5900, 5901, 5902, 6080):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, f"port {port} answers"
    listening = in_desktop(["sh", "-c", "cat /proc/net/tcp /proc/net/tcp6"])
    docker_dns = "0B00007F"  # 127.0.0.11: Docker's resolver on a user-defined network
    ports = {int(line.split()[1].rsplit(":", 1)[1], 16) for line in listening.splitlines()[1:]
             if len(line.split()) > 3 and line.split()[3] == "0A"
             and not line.split()[1].startswith(docker_dns)}  # fmt: skip
    assert ports == {8888}  # only the single-user server, which the proxy reaches


def test_lab_and_desktop_side_by_side(desktop_tab: Page, alice: PortalClient) -> None:
    alice.spawn("lab-next-to-desktop", {"type": "lab", "datasets": [XRF]})
    assert container(DESKTOP).status == "running"
    alice.stop("lab-next-to-desktop")
    box = container(DESKTOP)
    box.reload()
    assert box.status == "running"


def test_home_page_shows_sessions_and_remaining_time(desktop_tab, browser, hub, artifacts):
    context = browser.new_context(viewport={"width": 1300, "height": 700})
    context.add_cookies(desktop_tab.context.cookies())  # the same signed-in user, another tab
    page = context.new_page()
    page.goto(f"{hub.url}/hub/home")
    row = page.locator(f"tr.portal-session[data-server-name='{DESKTOP}']")
    expect(row).to_contain_text("Desktop")
    expect(row).to_contain_text(XRF)
    expect(row.locator(".portal-remaining")).to_contain_text("if idle")
    page.screenshot(path=artifacts / "09-home-sessions.png", full_page=True)
    context.close()


def test_culler_stops_an_unwatched_desktop_but_not_a_connected_one(
    desktop_tab: Page, alice: PortalClient
) -> None:
    alice.spawn("unwatched", {"type": "desktop", "datasets": [XRF]})
    deadline = time.monotonic() + IDLE_TIMEOUT * 4
    while "unwatched" in alice.api("GET", "hub/api/users/alice").json()["servers"]:
        assert time.monotonic() < deadline, "the idle desktop was not culled"
        time.sleep(2)
    servers = alice.api("GET", "hub/api/users/alice").json()["servers"]
    assert DESKTOP in servers and servers[DESKTOP]["ready"]  # its tab is still open
    expect(desktop_tab.locator("#status")).to_have_text("Connected")
