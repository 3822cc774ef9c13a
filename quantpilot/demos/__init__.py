"""Small runnable demonstrations (`python -m quantpilot.demos.<name>`)."""
