"""report.html: the figures a competitor decides from (leaderboard, diversity, blend, errors, training curves).

`gather` reads a workspace without writing to it, `figures` draws with matplotlib (Agg), `html` assembles one
self-contained file with every figure embedded as a base64 PNG.
"""
