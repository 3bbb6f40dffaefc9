"""``./dev up``: p2pd's main job on embedded defaults, in the foreground.

For now that is a local registry with its own Redis, on loopback: HTTP API on 127.0.0.1:8000, STUN on
127.0.0.1:3478, state in ``var/registry`` of the checkout. Extra arguments go to ``twistd p2pd --role=registry``
(for example ``--http tcp:9000:interface=127.0.0.1``). Ctrl-C stops it (and its Redis).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    data_dir = os.environ.get("P2PD_DEVNET_DIR") or os.path.join(ROOT, "var")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    args = [twistd, "-n", "--pidfile=", "p2pd", "--role=registry",
            "--data-dir", os.path.join(data_dir, "registry"),
            "--http", "tcp:8000:interface=127.0.0.1", "--stun", "127.0.0.1:3478"] + argv
    print("p2pd: starting a local registry with its own Redis (Ctrl-C to stop)", flush=True)
    print("p2pd: try  curl -s http://127.0.0.1:8000/v1/health  and  curl -s http://127.0.0.1:8000/v1/rooms",
          flush=True)
    os.execv(twistd, args)


if __name__ == "__main__":
    sys.exit(main())
