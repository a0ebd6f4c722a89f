"""Notebooks written for a test."""

from __future__ import annotations

import json


def notebook(*cells: tuple[str, str], **extra: object) -> bytes:
    """A notebook whose code cells are (id, source); ``extra`` goes into every cell."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "id": cell_id,
                "source": source,
                "metadata": {},
                "outputs": [],
                "execution_count": None,
                **extra,
            }
            for cell_id, source in cells
        ],
        "metadata": {"kernelspec": {"name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1).encode()
