"""portal.yaml's ``branding:``: what a site may say on its landing page, and what it may not.

The links and the logo end up on the page every visitor sees first, so anything but an
``http(s)`` URL (``javascript:``, ``data:``, ``//elsewhere``) is refused with the field and
the line; the logo file is served by the hub itself, that file and nothing else; and the
Helm chart passes the section through to the hub's ``portal.yaml`` untouched.
"""

from __future__ import annotations

import struct
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from portal import render, settings
from tests.support.helm import CI, hub_portal_yaml, run_helm
from tests.support.helm import render as helm_render
from tests.support.net import free_port
from tests.support.umbrella import Hub, Provider

BASE = """\
auth:
  issuer: https://login.example.eu/realms/umbrella
  client_id: portal
catalogue:
  backend: local
  local:
    data_root: data
"""


def parse(branding: str, base_dir: Path | None = None) -> settings.PortalSettings:
    text = BASE + "branding:\n" + textwrap.indent(textwrap.dedent(branding), "  ")
    return settings.parse(text, "portal.yaml", base_dir)


def refusal(branding: str, base_dir: Path | None = None) -> str:
    with pytest.raises(settings.SettingsError) as e:
        parse(branding, base_dir)
    return str(e.value)


def png() -> bytes:
    """A real 1x1 PNG, so the hub's logo handler serves an image a browser would draw."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x1d\x3f\x72")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


# -- validation ----------------------------------------------------------------------------


def test_defaults_name_the_portal_and_say_what_it_gives() -> None:
    branding = settings.parse(BASE).branding
    assert branding.name == "PaNOSC Portal"
    assert branding.facility == "" and branding.links == []
    assert "JupyterLab and remote desktops" in branding.tagline
    assert branding.logo_file == settings.DEFAULT_LOGO and settings.DEFAULT_LOGO.is_file()


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(document.cookie)",
        "JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "//evil.example/phish",
        "/\\evil.example/phish",
        "java\tscript:alert(1)",
        "https:evil.example",
        "ftp://files.example.eu/policy.pdf",
        "help.html",
    ],
)
def test_a_link_that_is_not_http_is_refused_on_its_line(url: str) -> None:
    message = refusal(f"links:\n  - title: Help\n    url: {yaml.safe_dump(url).splitlines()[0]}\n")
    assert message.startswith("portal.yaml:11: branding.links[0].url: link url"), message
    assert "https://" in message


@pytest.mark.parametrize(
    "url", ["https://help.example.eu/portal", "http://intra.eu/", "/hub/datasets"]
)
def test_http_links_and_portal_paths_are_kept(url: str) -> None:
    links = parse(f"links: [{{title: Help, url: '{url}'}}]\n").branding.links
    assert [(link.title, link.url) for link in links] == [("Help", url)]


@pytest.mark.parametrize(
    ("logo", "expected"),
    [
        ("http://cdn.example.eu/logo.png", "http:// would be mixed content"),
        ("data:image/svg+xml;base64,PHN2Zz4=", "give an https:// URL or an image file"),
        ("javascript:alert(1)", "give an https:// URL or an image file"),
        ("/etc/shadow", "the file must be an image"),
    ],
)
def test_a_logo_that_is_neither_https_nor_an_image_file_is_refused(
    logo: str, expected: str
) -> None:
    message = refusal(f"logo: '{logo}'\n")
    assert message.startswith("portal.yaml:9: branding.logo: "), message
    assert expected in message


def test_a_missing_logo_file_is_refused_with_its_full_path(tmp_path: Path) -> None:
    message = refusal("logo: img/logo.png\n", tmp_path)
    assert f"branding.logo: {tmp_path / 'img/logo.png'} is not a file on the hub host" in message


def test_a_logo_file_is_taken_from_the_files_folder(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img/logo.png").write_bytes(png())
    branding = parse("logo: img/logo.png\n", tmp_path).branding
    assert branding.logo_file == tmp_path / "img/logo.png" and branding.logo_url is None


def test_a_misspelt_key_names_the_valid_ones() -> None:
    message = refusal("nmae: ESRF portal\n")
    assert "portal.yaml:9: branding: unknown key 'nmae'; valid keys here: name, facility, logo" in (
        message
    )


# -- rendering -----------------------------------------------------------------------------


def test_branding_joins_the_culling_template_vars_and_the_hub_serves_the_logo() -> None:
    config = render.render_config(
        parse("name: ESRF portal\nfacility: ESRF\nlinks: [{title: Help, url: /help}]\n")
    )["JupyterHub"]
    variables = config["template_vars"]
    assert variables["cull_timeout"] == 3600  # the home page's lifetimes are still there
    assert variables["portal_branding"] == {
        "name": "ESRF portal",
        "facility": "ESRF",
        "tagline": settings.BrandingSettings().tagline,
        "logo_url": None,
        "links": [{"title": "Help", "url": "/help"}],
    }
    assert config["logo_file"] == str(settings.DEFAULT_LOGO)


def test_a_remote_logo_is_linked_not_served() -> None:
    config = render.render_config(parse("logo: https://cdn.example.eu/logo.svg\n"))["JupyterHub"]
    assert (
        config["template_vars"]["portal_branding"]["logo_url"] == "https://cdn.example.eu/logo.svg"
    )
    assert "logo_file" not in config


# -- a real hub ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def branded_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub whose site typed markup into its name and gave its own PNG logo."""
    folder = tmp_path_factory.mktemp("branded")
    provider = Provider(free_port(), folder / "op.log")
    provider.start()
    (folder / "data").mkdir()
    (folder / "site-logo.png").write_bytes(png())
    hub = Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "branding",
                "client_secret": "s",
                "allow_all": True,
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(folder / "data")}},
            "spawner": {"home_dir": str(folder / "homes/{username}")},
            "branding": {
                "name": "<script>alert('name')</script> Portal",
                "facility": "Example Neutron Source",
                "logo": str(folder / "site-logo.png"),
                "tagline": "Reduce your neutron data where it lives.",
                "links": [
                    {"title": "Help", "url": "https://help.example.eu/portal"},
                    {"title": "Data policy", "url": "https://example.eu/data-policy"},
                ],
            },
        },
        folder,
    )
    hub.start()
    yield hub
    hub.stop()
    provider.stop()


def test_the_landing_page_escapes_what_the_site_typed(branded_hub: Hub) -> None:
    page = requests.get(f"{branded_hub.url}/hub/login", timeout=10)
    assert page.status_code == 200
    assert "<script>alert('name')" not in page.text
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt; Portal</h1>" in page.text
    assert "Example Neutron Source" in page.text
    assert "Reduce your neutron data where it lives." in page.text
    assert '<a href="https://example.eu/data-policy">Data policy</a>' in page.text
    assert "Sign in with Umbrella" in page.text


def test_the_hub_serves_the_sites_logo_file_and_nothing_else(branded_hub: Hub) -> None:
    logo = requests.get(f"{branded_hub.url}/hub/logo", timeout=10)
    assert logo.status_code == 200
    assert logo.headers["Content-Type"] == "image/png"
    assert logo.content == png()
    # The handler serves one file: no path of the request can name another.
    for path in ("/hub/logo/../../../../etc/passwd", "/hub/logo/%2e%2e/jupyterhub_config.py"):
        r = requests.get(f"{branded_hub.url}{path}", timeout=10, allow_redirects=False)
        assert r.status_code in (302, 404) and b"root:" not in r.content, path
    assert requests.get(f"{branded_hub.url}/hub/logo?path=/etc/passwd", timeout=10).content == png()


# -- the Helm chart ------------------------------------------------------------------------


def test_the_chart_passes_branding_to_the_hubs_portal_yaml(tmp_path: Path) -> None:
    values = yaml.safe_load((CI / "esrf-like-values.yaml").read_text())
    objects = helm_render(CI / "esrf-like-values.yaml")
    portal_yaml = tmp_path / "portal.yaml"
    portal_yaml.write_text(hub_portal_yaml(objects))
    branding = settings.load(portal_yaml).branding
    assert branding.model_dump() == {
        "tagline": settings.BrandingSettings().tagline,
        **values["portal"]["branding"],
    }
    # Without branding values the hub keeps the portal's defaults.
    minimal = yaml.safe_load(hub_portal_yaml(helm_render(CI / "minimal-values.yaml")))
    assert "branding" not in minimal


def test_the_charts_schema_refuses_a_script_link(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    base = yaml.safe_load((CI / "minimal-values.yaml").read_text())
    base["portal"]["branding"] = {"links": [{"title": "Help", "url": "javascript:alert(1)"}]}
    values.write_text(yaml.safe_dump(base))
    out = run_helm("template", "portal", str(CI.parent), "-f", str(values))
    assert out.returncode != 0
    assert "/portal/branding/links/0/url" in out.stderr, out.stderr
