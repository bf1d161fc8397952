"""The socket gateway: WebSockets in, NATS subjects out, and back."""
