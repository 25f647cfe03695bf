"""The `/health` endpoint."""
