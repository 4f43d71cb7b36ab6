"""I/O shared by server and client: the selector loop that owns each TLS socket,
the send buffer that coalesces writes, and the one builder of TLS contexts."""
