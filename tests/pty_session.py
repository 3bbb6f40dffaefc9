"""A command run on a pseudo-terminal, for tests of what people see on one (prompts, progress, redraws)."""

import os
import pty
import select
import subprocess
import time


class Pty:
    """``expect(text)`` reads until *text* (str or bytes) has shown and returns all output so far; ``type(line)``
    types a line and Enter; ``write(data)`` types bytes as they are; ``close()`` kills it if it still runs."""

    def __init__(self, argv, env=None):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env=dict(os.environ if env is None else env, TERM="dumb"))
        os.close(slave)
        self.seen = b""

    def expect(self, text, timeout=30):
        needle = text.encode() if isinstance(text, str) else text
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            assert time.monotonic() < deadline, "no %r in %r" % (needle, self.seen[-400:])
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    assert needle in self.seen, "no %r in %r (the command ended)" % (needle, self.seen[-400:])
                self.seen += chunk
        return self.seen

    def type(self, line):
        self.write(line.encode() + b"\r")

    def write(self, data):
        os.write(self.master, data)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)
