"""p2pd: peer-to-peer chat and file transfer on Twisted, with a small rendezvous registry."""

__version__ = "0.1.0"
