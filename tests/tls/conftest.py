"""TLS test fixtures: a fresh PKI per module."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from certs import CA  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """CA plus leaves: a (a.example.com), wild (*.wild.example.com), dflt (default.test),
    up (upstream.test), client (a client certificate)."""
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d)
    ns = SimpleNamespace(ca=ca, dir=d, ca_path=str(ca.cert_path))
    for stem, names, client in (("a", ["a.example.com"], False),
                                ("wild", ["*.wild.example.com"], False),
                                ("dflt", ["default.test"], False),
                                ("up", ["upstream.test"], False),
                                ("client", [], True)):
        crt, key = ca.issue(stem, names, client=client)
        setattr(ns, stem, (str(crt), str(key)))
    return ns

