"""The attnspec HTML report: turns conformance, benchmark and asv results into a static site.

``reports.build.main`` is the command line (``attnspec report`` / ``python -m reports.build``).
The loader: ``reports.load`` groups result files into result sets, read by ``reports.cases`` (conformance
JSON lines) and ``reports.timings`` (bench JSON) through ``conformance.codec``, and ``reports.asv`` (asv
history), each field checked by ``conformance.fields``. One module per section builds its view: ``matrix``,
``precision``, ``speed``, ``memory``, ``workdepth``, ``history``, ``provenance``; ``reports.charts`` draws the
figures with matplotlib and ``reports.site`` renders the templates into the output folder.
"""
