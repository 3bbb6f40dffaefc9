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


def exit_on_signals():
    """SIGTERM ends the script with status 143 through the normal cleanup (``finally`` blocks stop what it
    started); SIGINT raises KeyboardInterrupt even when the script was started with SIGINT ignored."""

    def terminated(signum, frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def revision(root) -> str:
    """The commit of the checkout at *root*, with "+changes" when p2pd/ differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "p2pd"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")
