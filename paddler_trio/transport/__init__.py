"""The inference port's HTTP/1.1 server on Trio, sans-IO h11 and wsproto (`http_server`,
`server_websocket`): see `http_server`'s docstring for why that port is not on Hypercorn."""
