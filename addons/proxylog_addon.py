"""proxylog as a mitmproxy script: one redacted ECS JSON access record per request.

Usage, in front of Puma on :3000 (records go to the config's sinks, stdout by default):

    mitmdump -q -s addons/proxylog_addon.py \\
        --mode reverse:http://127.0.0.1:3000@8080 \\
        --set proxylog_config=configs/proxylog.yaml

`-q` keeps mitmdump's own flow lines off stdout, which the stdout sink uses. Under mitmdump,
options a front proxy needs (connection_strategy=lazy, keep_host_header, block_global=false)
are switched on when left at mitmproxy's defaults. `proxylog serve` runs the same addon in a
leaner master (about 1.5x the throughput) with graceful shutdown.
"""

from proxylog.mitm.addon import ProxyLog

addons = [ProxyLog()]
