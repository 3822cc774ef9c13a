# Makes these test modules `engines.test_*`, so their basenames cannot clash with test files
# elsewhere under tests/ (pytest's default import mode needs unique basenames).
