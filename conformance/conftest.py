"""Loads the attnspec plugin for ``pytest conformance/`` (a non-root conftest may not use pytest_plugins)."""

from conformance.interrupts import pytest_runtest_call, pytest_runtest_setup  # noqa: F401 - found by name
from conformance.plugin import (  # noqa: F401 - pytest finds hooks and fixtures by name
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_runtest_makereport,
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_terminal_summary,
    trial,
)
