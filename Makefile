# The two commands of the README. The logic lives in tools/bootstrap.py (Python), not here.
PYTHON ?= python3

.PHONY: demo test setup

demo:
	$(PYTHON) tools/bootstrap.py demo $(ARGS)

test:
	$(PYTHON) tools/bootstrap.py test $(ARGS)

setup:
	$(PYTHON) tools/bootstrap.py setup
