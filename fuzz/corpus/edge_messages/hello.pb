

agent-10.1.0 (2quic