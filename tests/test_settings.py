"""portal.yaml: every mistake a site admin can make gets the file, the line, the field and a fix."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from jupyterhub.app import JupyterHub
from traitlets.config import PyFileConfigLoader

from portal import render, settings
from portal.auth import UmbrellaOAuthenticator
from portal.cli import main
from spawner.local import PortalLocalSpawner

VALID = """\
hub:
  port: 8123
auth:
  issuer: https://login.example.eu/realms/umbrella
  client_id: portal
  admin_groups: [admins]
catalogue:
  backend: local
  local:
    data_root: data
spawner:
  storage_roots:
    /data/visitor: /srv/gpfs/visitor
extra_config:
  Spawner:
    start_timeout: 99
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "portal.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(settings.SettingsError) as info:
        settings.load(write(tmp_path, text))
    return str(info.value)


def test_valid_file_loads_with_paths_from_its_folder(tmp_path: Path) -> None:
    s = settings.load(write(tmp_path, VALID))
    assert s.hub.port == 8123
    assert s.catalogue.local.data_root == tmp_path / "data"
    assert s.hub.state_dir == tmp_path / "state"


def test_unknown_key_names_line_and_valid_keys(tmp_path: Path) -> None:
    text = VALID.replace("  client_id: portal\n", "  client_id: portal\n  clientsecret: x\n")
    msg = problems(tmp_path, text)
    assert "portal.yaml:6: auth: unknown key 'clientsecret'" in msg
    assert "client_secret" in msg  # what would be valid


def test_unknown_top_level_section(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID + "spawnr: {}\n")
    assert ":17: (top level): unknown key 'spawnr'" in msg
    assert "spawner" in msg


def test_wrong_type_names_field_and_line(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID.replace("port: 8123", "port: eighty"))
    assert "portal.yaml:2: hub.port:" in msg
    assert "integer" in msg


def test_port_out_of_range(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID.replace("port: 8123", "port: 70000"))
    assert "hub.port" in msg and "65535" in msg


def test_missing_issuer(tmp_path: Path) -> None:
    msg = problems(
        tmp_path, VALID.replace("  issuer: https://login.example.eu/realms/umbrella\n", "")
    )
    assert "portal.yaml:3: auth.issuer: is required but missing" in msg


def test_bad_url(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID.replace("https://login.example.eu/realms/umbrella", "login"))
    assert "portal.yaml:4: auth.issuer:" in msg
    assert "https://" in msg  # an example of a valid value


def test_bad_enum_lists_choices(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID.replace("backend: local", "backend: scicatt"))
    assert "portal.yaml:8: catalogue.backend:" in msg and "'local'" in msg


def test_a_home_mode_that_would_block_a_second_server_is_refused(tmp_path: Path) -> None:
    """ReadWriteOncePod: a user's lab would hold the home, and their desktop never start."""
    kube = "  backend: kube\n  kube:\n    home:\n      access_modes: [ReadWriteOncePod]\n"
    msg = problems(tmp_path, VALID.replace("spawner:\n", "spawner:\n" + kube))
    assert "portal.yaml:15: spawner.kube.home.access_modes[0]:" in msg
    assert "'ReadWriteOnce' or 'ReadWriteMany'" in msg


def test_relative_storage_prefix_refused(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID.replace("/data/visitor:", "data/visitor:"))
    assert "spawner.storage_roots" in msg and "absolute" in msg


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID.replace("port: 8123", "port: x").replace("client_id", "id"))
    assert "hub.port" in msg and "auth.client_id" in msg and "unknown key 'id'" in msg


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID.replace("  port: 8123", "  port: [8123"))
    assert msg.startswith(f"{tmp_path / 'portal.yaml'}:")
    assert "not valid YAML" in msg


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(settings.SettingsError, match="no such file"):
        settings.load(tmp_path / "absent.yaml")
    path = write(tmp_path, VALID)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(settings.SettingsError, match="cannot read the file"):
        settings.load(path)
    if os.geteuid() != 0:  # root reads files whatever their mode
        path.write_text(VALID)
        path.chmod(0)
        with pytest.raises(settings.SettingsError, match="cannot read the file"):
            settings.load(path)


def test_bad_extra_config_class(tmp_path: Path) -> None:
    msg = problems(tmp_path, VALID.replace("  Spawner:", "  spawner_thing:"))
    assert "extra_config" in msg and "not a configurable class name" in msg


def test_cli_check_reports_and_exits_nonzero(tmp_path: Path, capsys) -> None:
    good = write(tmp_path, VALID)
    assert main(["config", "check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    good.write_text(VALID.replace("port: 8123", "port: x"))
    assert main(["config", "check", str(good)]) == 1
    err = capsys.readouterr().err
    assert "hub.port" in err and "Traceback" not in err


def test_rendered_config_loads_into_a_real_jupyterhub(tmp_path: Path, oidc_provider: str) -> None:
    """The rendered file is a jupyterhub_config.py JupyterHub itself reads and acts on."""
    text = VALID.replace("https://login.example.eu/realms/umbrella", oidc_provider)
    rendered = tmp_path / "jupyterhub_config.py"
    rendered.write_text(render.render_python(settings.load(write(tmp_path, text))))

    hub = JupyterHub()
    hub.load_config_file(str(rendered))
    assert hub.authenticator_class is UmbrellaOAuthenticator
    assert hub.spawner_class is PortalLocalSpawner
    assert hub.bind_url == "http://127.0.0.1:8123/"

    config = PyFileConfigLoader(rendered.name, str(tmp_path)).load_config()
    authenticator = UmbrellaOAuthenticator(config=config)  # runs OIDC discovery for real
    assert authenticator.authorize_url == f"{oidc_provider}/oauth2/authorize"
    assert authenticator.token_url == f"{oidc_provider}/oauth2/token"
    assert authenticator.admin_groups == set()  # admins hold portal-admin, not admin
    assert authenticator.validate_server_cert is True
    roles = {r["name"]: r for r in config.JupyterHub.load_roles}
    assert roles["admin"]["users"] == [] and roles["portal-admin"]["groups"] == ["admins"]
    assert "admins" in authenticator.allowed_groups
    assert config.Spawner.start_timeout == 99  # extra_config passed through
    assert config.PortalSpawner.storage_roots == {"/data/visitor": "/srv/gpfs/visitor"}
