"""Debian's Chromium for Playwright, and signing in through it as a person does."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def sign_in(page: Page, hub_url: str, issuer: str, sub: str, next_path: str) -> None:
    """In the browser: follow the hub's sign-in to the provider's page, pick ``sub`` there
    as a person clicks it, and wait to land on ``next_path`` (a path on the hub)."""
    page.goto(f"{hub_url}/hub/oauth_login?next={next_path}")
    page.wait_for_url(f"{issuer}/**")
    page.locator(f"button[value='{sub}']").click()
    page.wait_for_url(f"**{next_path}")
