"""mitmdump script for the benchmark's baseline: egressguard's upstream routing alone.

Loaded as `mitmdump -s bench/bare_route.py --set egressguard_upstream_map=HOST=ADDR:PORT`
so bare mitmproxy reaches the fake vendor exactly as egressguard does (same
per-request routing, same SNI and certificate check) and the two differ only by the
rest of the egressguard pipeline.
"""

from egressguard.pipeline.upstream import UpstreamMap

addons = [UpstreamMap()]
