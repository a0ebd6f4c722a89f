"""The local sandbox's accounts and homes (spawner.sandbox), on this host, as root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spawner.sandbox import Account, SandboxError, account_name, take_home


@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_two_portal_users_never_share_an_account(one: str, other: str) -> None:
    if one != other:
        assert account_name(one) != account_name(other)


def test_a_shortened_name_can_never_be_another_users_plain_name() -> None:
    shortened = account_name("a.b")
    assert shortened != "panosc-a.b" and len(shortened) <= 32
    assert account_name(shortened.removeprefix("panosc-")) != shortened


def test_a_home_of_another_account_is_refused_not_handed_over(tmp_path: Path) -> None:
    home = tmp_path / "alice"
    home.mkdir()
    (home / "thesis.tex").write_text("someone else's")
    os.chown(home, 4242, 4242)  # e.g. a real user's home that the template happens to name
    with pytest.raises(SandboxError, match="belongs to another account"):
        take_home(home, Account("panosc-alice", 4343, 4343))
    assert home.stat().st_uid == 4242 and (home / "thesis.tex").stat().st_uid == 0


def test_a_home_the_portal_made_earlier_is_handed_over_whole(tmp_path: Path) -> None:
    home = tmp_path / "bob"
    (home / "notebooks").mkdir(parents=True)
    (home / "notebooks/a.ipynb").write_text("{}")
    os.symlink("/etc/shadow", home / "link")  # not followed
    take_home(home, Account("panosc-bob", 4344, 4344), legacy_owner=os.geteuid())
    assert {p.lstat().st_uid for p in [home, *home.rglob("*")]} == {4344}
    assert Path("/etc/shadow").stat().st_uid == 0
    assert home.stat().st_mode & 0o777 == 0o700


def test_a_root_folder_the_template_names_is_not_handed_over(tmp_path: Path) -> None:
    """e.g. /home/{username} and a user called like an admin's root-owned folder."""
    folder = tmp_path / "lost+found"
    folder.mkdir()
    (folder / "secret").write_text("root's")
    with pytest.raises(SandboxError, match="belongs to another account"):
        take_home(folder, Account("panosc-lost-found", 4345, 4345))
    assert folder.stat().st_uid == 0 and (folder / "secret").stat().st_uid == 0


def test_a_new_home_is_made_for_the_account_alone(tmp_path: Path) -> None:
    home = tmp_path / "homes/carol"
    take_home(home, Account("panosc-carol", 4346, 4346))
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (4346, 0o700)
    assert (home / "datasets").stat().st_uid == 4346
