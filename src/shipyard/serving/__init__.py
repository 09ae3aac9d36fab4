"""Online serving: the data plane and the transports on top of it."""
