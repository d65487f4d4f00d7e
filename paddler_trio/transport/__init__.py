"""Byte streams and WebSockets on Trio, shared by the balancer and the agent: writing a stream at
once from any task (`stream_writer`), whole WebSocket frames (`websocket_frames`), and our own
WebSocket on wsproto for both ends of a connection (`direct_websocket`)."""
