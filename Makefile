test:
	HF_HUB_OFFLINE=1 python -m pytest

test-slow:
	HF_HUB_OFFLINE=1 python -m pytest -m slow

quality:
	ruff check .
	python ../shared/tools/structure_check.py .

.PHONY: test test-slow quality
