"""The mitmproxy data plane: the ProxyLog addon, flow translation, the lean Master, the HTTP/1
guard layer, replies and connection helpers. The only package that imports mitmproxy."""
