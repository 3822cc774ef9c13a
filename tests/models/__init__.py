# Makes these test modules `models.test_*`, so that test_registry.py cannot clash with a
# test_registry.py elsewhere under tests/ (pytest's default import mode needs unique basenames).
