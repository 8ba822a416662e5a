"""Baselines for the benchmarks: a lean mitmproxy Master without ProxyLog.

    python benchmarks/lean_master.py plain|cached UPSTREAM_URL PORT STATE_DIR

plain:  mitmproxy's own Master and AddonManager with core, proxyserver, next_layer and
        errorcheck, nothing else.
cached: proxylog's LeanMaster (same addons, cached hook dispatch) with ProxyLog left out,
        so comparing `proxylog serve` against it isolates what the addon costs.
"""

from __future__ import annotations

import argparse
import asyncio

from mitmproxy import master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver

from proxylog.config import Config
from proxylog.mitm.master import LeanMaster, master_options, proxy_modes


async def main(kind: str, upstream: str, port: int, state_dir: str) -> None:
    config = Config(upstream=upstream, listen=("127.0.0.1", port), state_dir=state_dir)
    if kind == "cached":
        m: master.Master = LeanMaster(config, with_proxylog=False)
    else:
        m = master.Master(options.Options(), with_termlog=False)
        m.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), errorcheck.ErrorCheck())
        m.options.update(**master_options(config, proxy_modes(config)))
    await m.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=("plain", "cached"))
    parser.add_argument("upstream", help="Puma's URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("port", type=int, help="the loopback port to listen on")
    parser.add_argument("state_dir")
    args = parser.parse_args()
    asyncio.run(main(args.kind, args.upstream, args.port, args.state_dir))
