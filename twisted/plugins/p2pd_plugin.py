"""Declares the ``p2pd`` twistd plugin; everything else lives in :mod:`p2pd.tap`."""

from twisted.application.service import ServiceMaker

p2pd = ServiceMaker(
    "p2pd",
    "p2pd.tap",
    "p2pd: peer-to-peer chat and file transfer (roles: registry, peer)",
    "p2pd",
)
