# Thin wrappers over ./dev, which bootstraps .venv by itself.
.PHONY: up test test-fast bench clean
up:
	./dev up
test:
	./dev test
test-fast:
	./dev test -m "not slow"
bench:
	./dev bench
clean:
	rm -rf .venv var build *.egg-info
