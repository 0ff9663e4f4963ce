test:
	HF_HUB_OFFLINE=1 python -m pytest

test-slow:
	HF_HUB_OFFLINE=1 python -m pytest -m slow

quality:
	ruff check .

.PHONY: test test-slow quality
