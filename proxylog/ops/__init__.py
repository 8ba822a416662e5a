"""Operating a running proxylog: the control API, the Prometheus collector and the small
HTTP/1.1 server both are served on."""
