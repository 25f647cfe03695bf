"""The `/talk` endpoint and the `python -m talk` command."""
