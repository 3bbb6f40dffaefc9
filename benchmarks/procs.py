"""Process helpers shared by the benchmark scripts (benchmarks/ is on sys.path as the script's directory)."""

import signal
import subprocess


def stop_pid(proc, grace=5):
    """SIGTERM one child we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
        except ProcessLookupError:
            pass
    if proc.stdout is not None:
        proc.stdout.close()
