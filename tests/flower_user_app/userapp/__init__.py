"""A user's Flower app, written without fedunlearn except the recording wrapper on the server."""
