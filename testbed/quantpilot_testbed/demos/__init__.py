"""Small runnable demonstrations (`python -m quantpilot_testbed.demos.<name>`, or `make demo`)."""
