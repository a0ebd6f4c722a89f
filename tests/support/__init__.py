"""Helpers the tests share, and nothing that pytest collects.

Test modules import from here, never from ``conftest`` or from one another:

- :mod:`~tests.support.paths`: where the repository and the test artifacts are;
- :mod:`~tests.support.net`: free ports and waiting for a process to answer HTTP;
- :mod:`~tests.support.browser`: Debian's Chromium and signing in as a person does;
- :mod:`~tests.support.accessibility`: axe-core checks of a page;
- :mod:`~tests.support.demo`: the ``panosc-portal demo`` command as a user runs it;
- :mod:`~tests.support.umbrella`: an OIDC provider and a JupyterHub process to sign in to;
- :mod:`~tests.support.docker_hub`: a hub on the Docker backend for the tests of one module;
- :mod:`~tests.support.mock_hub`: JupyterHub's test hub serving the portal's pages, no Docker;
- :mod:`~tests.support.portal_client`: a signed-in HTTP client of the portal;
- :mod:`~tests.support.docker_support`: the Docker engine, the test images, cleaning up;
- :mod:`~tests.support.helm`: rendering the Helm chart and reading what it renders;
- :mod:`~tests.support.slurm`: a real Slurm cluster on this machine for the Slurm backend;
- :mod:`~tests.support.kube`: JupyterHub users of a Kubernetes hub and its site, no cluster;
- :mod:`~tests.support.notebooks`: notebooks written for a test;
- :mod:`~tests.support.records`: provenance records as a session leaves them;
- :mod:`~tests.support.catalogue_examples`: the example facility's people and datasets;
- :mod:`~tests.support.catalogue_servers`, :mod:`~tests.support.fake_scicat`,
  :mod:`~tests.support.fake_search_api`: HTTP catalogue servers that behave like the real ones.

Fixtures stay in ``tests/conftest.py``.
"""
