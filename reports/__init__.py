"""The attnspec HTML report: turns conformance, benchmark and asv results into a static site.

``reports.build.main`` is the command line (``attnspec report`` / ``python -m reports.build``);
``reports.load`` reads the result files, ``reports.charts`` draws the figures with matplotlib.
"""
