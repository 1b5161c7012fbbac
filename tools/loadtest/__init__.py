"""Load tests: the in-repo generator (run.py), its report (report.py) and the real ghz (ghz.py)."""
