"""The services: what deepseekd does, with no HTTP in it. Built once by the container
(``services/container.py``) and used by the daemon's HTTP layer and by the CLI alike."""
