# Makes these test modules `calibrators.test_*`, so their basenames cannot clash with test files
# elsewhere under tests/ (pytest's default import mode needs unique basenames).
